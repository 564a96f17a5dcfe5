"""``fsrep-resync MOUNTPOINT --path PATH``: a file or directory changed in
the store behind the mount's back (an outside ``cp --reflink``, as a
hypervisor's hook does) is compared with the replica by digest, and only
what differs crosses the link (counted at a FaultProxy)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cluster, assert_same_tree, fsrep_resync, run_fsrep, write_random

KiB = 1024
MiB = 1024 * KiB


def _outside_clone(src: Path, dst: Path) -> None:
    """What a hypervisor's hook does in the store itself: a reflink where
    the filesystem has them, a copy where not."""
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(dst)], check=True)


def _differs(cluster: Cluster, path: str) -> bool:
    a, b = cluster.primary_store / path, cluster.secondary.replica_root() / path
    return a.exists() != b.exists() or (a.is_file() and a.read_bytes() != b.read_bytes())


def _rewrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_a_file_cloned_over_outside_the_mount_sends_only_what_differs(proxied: Cluster) -> None:
    proxied.mount()
    m, store = proxied.mnt, proxied.primary_store
    (m / "vms").mkdir()
    write_random(m / "vms" / "base.img", 8)
    run_fsrep("clone", str(m / "vms" / "base.img"), str(m / "vms" / "vm2.img"))
    _rewrite(m / "vms" / "vm2.img", 3 * MiB, os.urandom(64 * KiB))  # vm2 is base plus its own 64 KiB
    proxied.wait_state("InSync")
    _outside_clone(store / "vms" / "base.img", store / "vms" / "vm2.img")  # reverted to base, unseen by fsrep
    assert _differs(proxied, "vms/vm2.img")
    assert proxied.status()["state"] == "InSync", "fsrep saw a change made outside the mount"
    proxied.proxy.reset_counters()
    done = fsrep_resync(str(m), "--path", str(m / "vms" / "vm2.img"))
    assert done.returncode == 0, done.stderr
    assert f"1 files ({8 * MiB} B) by digest" in done.stdout, done.stdout
    carried = proxied.proxy.bytes_to_secondary
    assert carried < 1 * MiB, f"{carried} bytes crossed the link to repair 64 KiB of an 8 MiB file"
    status = proxied.status()
    assert (status["state"], status["dirty_bytes"]) == ("InSync", 0), status
    assert status["resync"]["bytes_checked"] >= 8 * MiB, status["resync"]
    assert not _differs(proxied, "vms/vm2.img")
    assert (m / "vms" / "vm2.img").read_bytes() == (m / "vms" / "base.img").read_bytes()
    proxied.assert_replicated()


def test_a_directory_made_and_a_file_removed_outside_the_mount(proxied: Cluster) -> None:
    proxied.mount()
    m, store = proxied.mnt, proxied.primary_store
    (m / "vms").mkdir()
    write_random(m / "vms" / "base.img", 2)
    (m / "vms" / "old.img").write_bytes(b"old")
    (m / "other" / "sub").mkdir(parents=True)  # below a sibling: the root's entries are compared too
    (store / "vms" / "vm3").mkdir()  # a VM folder made by the hook: a disk, a sparse one, a config, a link
    _outside_clone(store / "vms" / "base.img", store / "vms" / "vm3" / "disk.img")
    with open(store / "vms" / "vm3" / "sparse.img", "wb") as f:
        f.truncate(1 << 30)
        f.write(b"head")
    (store / "vms" / "vm3" / "vm.conf").write_text("memory = 2G\n")
    os.symlink("disk.img", store / "vms" / "vm3" / "current")
    os.unlink(store / "vms" / "old.img")
    other = os.stat(store / "other" / "sub")
    (store / "other" / "sub" / "stray").write_bytes(b"not named: left alone")
    done = fsrep_resync(str(m), "--path", "vms", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "InSync"
    replica = proxied.secondary.replica_root()
    assert not (replica / "vms" / "old.img").exists()
    assert not (replica / "other" / "sub" / "stray").exists(), "a path that was not named was compared"
    assert os.readlink(replica / "vms" / "vm3" / "current") == "disk.img"
    assert os.stat(replica / "vms" / "vm3" / "sparse.img").st_blocks * 512 < 1 * MiB, "the hole was sent as data"
    (store / "other" / "sub" / "stray").unlink()
    os.utime(store / "other" / "sub", ns=(other.st_atime_ns, other.st_mtime_ns))
    proxied.umount()
    assert_same_tree(store, replica)


def test_a_path_removed_outside_the_mount_is_removed_on_the_replica(mounted: Cluster) -> None:
    m, store = mounted.mnt, mounted.primary_store
    (m / "a").mkdir()
    (m / "a" / "b").mkdir()
    (m / "a" / "b" / "f").write_bytes(b"x" * 5000)
    shutil.rmtree(store / "a" / "b")
    done = fsrep_resync(str(m), "--path", str(m / "a" / "b"))
    assert done.returncode == 0, done.stderr
    assert not (mounted.secondary.replica_root() / "a" / "b").exists()
    mounted.assert_replicated()


def test_path_refuses_what_it_cannot_compare_in_one_line(mounted: Cluster, tmp_path: Path) -> None:
    m = mounted.mnt
    cases = [
        (["--path", str(tmp_path)], "is not in the mount"),
        (["--path", "no/such/dir/file"], "no such file or directory"),
        (["--path", "f", "--mode", "checksum"], "--path finds its group itself"),
    ]
    for extra, expected in cases:
        done = fsrep_resync(str(m), *extra)
        assert done.returncode != 0, (extra, done.stdout)
        assert expected in done.stderr, (extra, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    assert mounted.status()["state"] == "InSync"


def test_a_file_damaged_here_is_restored_from_the_secondary(proxied: Cluster) -> None:
    proxied.mount()
    m, store = proxied.mnt, proxied.primary_store
    (m / "vms").mkdir()
    write_random(m / "vms" / "disk.img", 4)
    good = (m / "vms" / "disk.img").read_bytes()
    os.chmod(m / "vms" / "disk.img", 0o640)
    (m / "lost.txt").write_bytes(b"only on the replica soon")
    proxied.wait_state("InSync")
    _rewrite(store / "vms" / "disk.img", 1 * MiB, b"\0" * (128 * KiB))  # damaged in the store, unseen by fsrep
    os.unlink(store / "lost.txt")
    proxied.proxy.reset_counters()
    for name in ("vms/disk.img", "lost.txt"):
        done = fsrep_resync(str(m), "--path", name, "--from", "secondary")
        assert done.returncode == 0, done.stderr
        assert f"/{name} was restored from the secondary" in done.stdout, done.stdout
    carried = proxied.proxy.bytes_to_secondary
    assert carried < 1 * MiB, f"{carried} bytes crossed to the secondary: the restored data was sent back"
    assert (m / "vms" / "disk.img").read_bytes() == good  # through the mount: no stale page survived
    assert (m / "lost.txt").read_bytes() == b"only on the replica soon"
    assert os.stat(m / "vms" / "disk.img").st_mode & 0o777 == 0o640
    kept = list((store / ".fsrep" / "divergent").glob("*/*/vms/disk.img"))
    assert len(kept) == 1, kept
    assert kept[0].read_bytes()[1 * MiB:1 * MiB + 128 * KiB] == b"\0" * (128 * KiB), "the damaged copy was not kept"
    status = proxied.status()
    assert (status["state"], status["dirty_bytes"]) == ("InSync", 0), status
    proxied.umount()
    assert_same_tree(store, proxied.secondary.replica_root())


@pytest.mark.expect_log("resync refused: ")
def test_a_restore_refuses_what_it_cannot_restore_in_one_line(mounted: Cluster) -> None:
    m = mounted.mnt
    (m / "d").mkdir()
    (m / "here-only").write_bytes(b"x")
    mounted.wait_state("InSync")
    os.unlink(mounted.secondary.replica_root() / "here-only")
    cases = [
        (["--path", "here-only", "--from", "secondary"], "the secondary holds no /here-only; nothing was changed"),
        (["--path", "d", "--from", "secondary"], "/d is a directory there"),
        (["--from", "secondary"], "--from secondary restores the file named by --path"),
    ]
    for extra, expected in cases:
        done = fsrep_resync(str(m), *extra)
        assert done.returncode != 0, (extra, done.stdout)
        assert expected in done.stderr, (extra, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (m / "here-only").read_bytes() == b"x"
    assert mounted.status()["state"] == "InSync", "a refused restore left the group"
