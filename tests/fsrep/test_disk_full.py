"""The primary store's disk fills up: fsrep never makes a change the
replica will lack before it has durably said so, gives up its own reserve
so that deletes and overwrites go on, and a resync that cannot save its
result retries instead of escalating to a whole-tree compare."""

from __future__ import annotations

import errno
import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AT, LINK_CLOSED, RESERVE_GIVEN_UP, SESSION_CLOSED, Cluster, assert_same_tree, wait_for

STALE_MARK_UNSAVED = (r" ERROR \S+: group \S+: cannot record that the replica is stale \(\[Errno 28\] No space left on "
                      r"device\); changes that cannot be replicated are refused until it can be saved$")
DIRTY_SET_UNSAVED = (r" ERROR \S+: group \S+: cannot save the dirty set \(\[Errno 28\] No space left on device\); "
                     r"retrying every second, and the activity log keeps what changed meanwhile$")
SNAPSHOTS_UNSAVED = (r" ERROR \S+: group \S+: cannot save the snapshots \(\[Errno 28\] No space left on device\); "
                     r"retrying every second")  # they are saved with the dirty set
LOG_LINES_LOST = r" WARNING \S+: \d+ log lines were lost: the log file could not be written$"  # the disk is full
RESULT_UNSAVED = (r" WARNING \S+: group \S+: (?:resync failed|link to \S+ lost" + AT + r": resync abandoned): cannot "
                  r"save the dirty set; the resync is retried with the next session$")

KiB = 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster whose primary store lies on a 4 MiB tmpfs (with room for
    ballast files beside the store), secondary running, not mounted."""
    cluster = Cluster(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "fsrep-test-disk", str(disk)], check=True)
    cluster.primary_store = disk / "store"
    cluster.primary_store.mkdir()
    cluster.secondary.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(cluster: Cluster) -> None:
    """Fill the store's disk with ballast outside the store, to the last byte."""
    disk = cluster.primary_store.parent
    for i in itertools.count():
        with pytest.raises(OSError) as caught:
            _write_until_full(disk / f"ballast{i}")
        assert caught.value.errno == errno.ENOSPC
        if (disk / f"ballast{i}").stat().st_size == 0:
            return


def _write_until_full(path: Path) -> None:
    with open(path, "wb") as f:
        while True:
            f.write(b"\1" * (64 * KiB))
            f.flush()


def _empty(cluster: Cluster) -> None:
    for ballast in cluster.primary_store.parent.glob("ballast*"):
        ballast.unlink()


def _overwrite(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


@pytest.mark.expect_log(LINK_CLOSED, STALE_MARK_UNSAVED, DIRTY_SET_UNSAVED, SNAPSHOTS_UNSAVED, LOG_LINES_LOST)
def test_a_change_the_stale_mark_cannot_cover_fails_with_enospc(small_disk: Cluster) -> None:
    cluster = small_disk
    cluster.mount()
    f = cluster.mnt / "f"
    f.write_bytes(b"a" * (64 * KiB))
    _fill(cluster)
    (cluster.primary_store / ".fsrep" / "reserve").unlink()  # as if an earlier shortage had used it up
    _fill(cluster)
    cluster.secondary.stop()
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the link loss")
    with pytest.raises(OSError) as caught:
        _overwrite(f, b"b" * 100)
    assert caught.value.errno == errno.ENOSPC
    assert f.read_bytes() == b"a" * (64 * KiB), "a refused change was applied"
    _empty(cluster)
    _overwrite(f, b"b" * 100)  # room for the mark again: accepted, kept local and dirty
    cluster.secondary.start()
    wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0, "InSync", timeout=60)
    cluster.umount()
    assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())


@pytest.mark.expect_log(LINK_CLOSED, RESERVE_GIVEN_UP)
def test_the_reserve_lets_changes_go_on_when_the_disk_is_full_at_a_link_loss(small_disk: Cluster) -> None:
    cluster = small_disk
    cluster.mount()
    (cluster.mnt / "old").write_bytes(b"o" * (256 * KiB))
    f = cluster.mnt / "f"
    f.write_bytes(b"a" * (64 * KiB))
    _fill(cluster)
    cluster.secondary.stop()
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the link loss")
    _overwrite(f, b"b" * 100)
    (cluster.mnt / "old").unlink()
    cluster.secondary.start()
    wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0, "InSync", timeout=60)
    cluster.umount()
    _empty(cluster)
    assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())


@pytest.mark.expect_log(LINK_CLOSED, DIRTY_SET_UNSAVED, SNAPSHOTS_UNSAVED, RESULT_UNSAVED, SESSION_CLOSED,
                        LOG_LINES_LOST)
def test_a_resync_that_cannot_save_its_result_retries_without_escalating(small_disk: Cluster) -> None:
    cluster = small_disk
    cluster.mount()
    f = cluster.mnt / "f"
    f.write_bytes(b"a" * (64 * KiB))
    cluster.secondary.stop()
    wait_for(lambda: cluster.status()["state"] == "OutOfSync", "the link loss")
    _overwrite(f, b"b" * 100)
    _fill(cluster)
    (cluster.primary_store / ".fsrep" / "reserve").unlink()
    _fill(cluster)
    cluster.secondary.start()

    def retried_twice() -> bool:
        s = cluster.status()
        restarts = max((s[k] or {}).get("restarts", 0) for k in ("resync", "resync_queued"))
        return "retried with the next session" in s["last_error"] and restarts >= 2

    wait_for(retried_twice, "two resyncs that could not save their result", timeout=60)
    assert cluster.status()["state"] != "InSync"
    assert "whole tree" not in cluster.primary_log()
    _empty(cluster)
    wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["dirty_bytes"] == 0, "InSync", timeout=60)
    assert "whole tree" not in cluster.primary_log()
    assert "Traceback" not in cluster.primary_log()
    cluster.umount()
    assert_same_tree(cluster.primary_store, cluster.secondary.replica_root())
