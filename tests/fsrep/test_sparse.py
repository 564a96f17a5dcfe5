"""Sparse files and huge sizes and offsets: holes stay holes on the replica
in every resync, a petabyte truncate or a write at 17 TiB costs what it
writes, and the daemons stay within a 2 GiB address-space cap."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    LINK_CLOSED,
    SESSION_CLOSED,
    UNCLEAN_SHUTDOWN,
    Cluster,
    assert_same_tree,
    fsrep_resync,
    wait_for,
)

MiB = 1024 * 1024
TiB = 1024 * 1024 * MiB
CAP = 2 << 30
PETABYTE_ISH = 999999999999999  # pjdfstest's truncate/12.t


def _in_sync(cluster: Cluster, timeout: float = 60) -> None:
    wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0,
             "InSync with nothing dirty", timeout=timeout)


def _kill_primary(cluster: Cluster) -> None:
    cluster.kill_primary()
    subprocess.run(["fusermount3", "-u", "-z", str(cluster.mnt)], check=False)
    cluster.mounted = False


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture
def tmpfs_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Both stores on tmpfs, which takes files up to 8 EiB (ext4 stops at
    16 TiB); both daemons under a 2 GiB address-space cap."""
    cluster = Cluster(tmp_path)
    cluster.memory_cap = cluster.secondary.memory_cap = CAP
    for store in (cluster.primary_store, cluster.secondary.store):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "fsrep-test-sparse", str(store)], check=True)
    try:
        cluster.secondary.start()
        yield cluster
    finally:
        cluster.cleanup()
        for store in (cluster.primary_store, cluster.secondary.store):
            subprocess.run(["umount", "-l", str(store)], check=False)


@pytest.mark.expect_log(LINK_CLOSED)
def test_a_petabyte_truncate_and_writes_at_17_tib_survive_a_cut_and_both_resyncs(tmpfs_cluster: Cluster) -> None:
    cluster = tmpfs_cluster
    cluster.mount()
    huge, far = cluster.mnt / "huge", cluster.mnt / "far"
    huge.write_bytes(b"head")
    os.truncate(huge, PETABYTE_ISH)
    with open(far, "wb") as f:
        f.seek(17 * TiB)
        f.write(b"x" * 100)
    _in_sync(cluster)
    cluster.secondary.stop()  # changes from now on are kept here, dirty
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the link loss")
    with open(far, "r+b") as f:
        f.seek(17 * TiB + 5 * MiB)
        f.write(b"y" * 100)
    os.truncate(huge, 10)
    os.truncate(huge, PETABYTE_ISH - TiB)
    cluster.secondary.start()
    _in_sync(cluster)
    done = fsrep_resync(str(cluster.mnt), "--mode", "checksum", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cluster.secondary.proc is not None
    assert cluster.secondary.proc.poll() is None, "the secondary died"
    cluster.umount()
    replica = cluster.secondary.replica_root()
    assert (replica / "huge").stat().st_size == PETABYTE_ISH - TiB
    assert _allocated(replica / "far") <= 2 * MiB
    assert_same_tree(cluster.primary_store, replica)


def test_what_the_store_refuses_gets_its_errno_and_the_daemon_lives(cluster: Cluster) -> None:
    cluster.memory_cap = CAP
    cluster.mount()
    f = cluster.mnt / "f"
    f.write_bytes(b"data")
    with pytest.raises(OSError) as caught:
        os.truncate(f, PETABYTE_ISH)  # past ext4's 16 TiB
    assert caught.value.errno == errno.EFBIG
    with open(f, "r+b") as h, pytest.raises(OSError) as caught:
        os.pwrite(h.fileno(), b"x", 17 * TiB)
    assert caught.value.errno == errno.EFBIG
    f.write_bytes(b"still served")
    assert cluster.status()["state"] == "InSync"
    cluster.assert_replicated()


def _sparse_file(path: Path, size: int, every: int) -> None:
    with open(path, "wb") as f:
        for offset in range(0, size, every):
            f.seek(offset)
            f.write(os.urandom(4096))
        f.truncate(size)


@pytest.mark.expect_log(UNCLEAN_SHUTDOWN, SESSION_CLOSED)
def test_a_quick_resync_after_a_crash_keeps_holes_holes(cluster: Cluster) -> None:
    cluster.mount()
    sparse = cluster.mnt / "sparse"
    _sparse_file(sparse, 256 * MiB, 8 * MiB)  # every 4 MiB extent it touches is active in the log
    _kill_primary(cluster)
    cluster.mount()  # the active extents are dirty: resynced from the activity log
    _in_sync(cluster)
    cluster.umount()
    primary, replica = cluster.primary_store / "sparse", cluster.secondary.replica_root() / "sparse"
    assert _allocated(replica) <= _allocated(primary) + MiB, "the resync wrote zeros into holes"
    cluster.assert_replicated()


@pytest.mark.parametrize("mode", ["quick", "checksum", "full"])
@pytest.mark.expect_log(LINK_CLOSED)
def test_every_resync_mode_punches_what_became_a_hole(cluster: Cluster, mode: str) -> None:
    cluster.mount()
    sparse = cluster.mnt / "sparse"
    with open(sparse, "wb") as f:
        f.write(os.urandom(16 * MiB))
    _in_sync(cluster)
    cluster.secondary.stop()
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the link loss")
    # A hole where there was data (cut short, grown again, written at its end): the replica must
    # lose that data too, and neither keep it nor fill the hole with zeros.
    os.truncate(sparse, 4 * MiB)
    with open(sparse, "r+b") as f:
        f.seek(12 * MiB)
        f.write(os.urandom(4 * MiB))
    cluster.secondary.start()
    _in_sync(cluster)
    if mode != "quick":
        done = fsrep_resync(str(cluster.mnt), "--mode", mode, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    cluster.umount()
    primary, replica = cluster.primary_store / "sparse", cluster.secondary.replica_root() / "sparse"
    assert _allocated(replica) <= _allocated(primary) + MiB
    cluster.assert_replicated()
