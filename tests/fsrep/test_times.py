"""Times mirrored: after every kind of change, and after each kind of
resync, every mtime on the replica — files', directories', symlinks', the
root's — equals the primary store's to the nanosecond.

Both stores are read directly with lstat (not through the mount, whose
attributes the kernel caches), and through the tree digest, which compares
mtimes too."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fsrep._digest import tree_differences
from tests.conftest import LINK_CLOSED, Cluster, fsrep_resync

MiB = 1024 * 1024
PAST = 1_000_000_000_000_000_007  # 2001: no change made now gives an entry this time


def mtimes(root: Path) -> dict[str, int]:
    """The mtime of every entry below *root* and of *root* itself, links
    never followed; ``.fsrep`` at the root left out."""
    out = {".": os.lstat(root).st_mtime_ns}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and ".fsrep" in dirnames:
            dirnames.remove(".fsrep")
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_mtime_ns
    return out


def assert_same_mtimes(cluster: Cluster, after: str) -> None:
    primary, replica = mtimes(cluster.primary_store), mtimes(cluster.secondary.replica_root())
    differ = {path: (primary.get(path), replica.get(path)) for path in primary.keys() | replica.keys()
              if primary.get(path) != replica.get(path)}
    assert not differ, f"after {after}: mtimes (primary, replica) differ: {differ}"


def test_every_change_leaves_the_replica_with_the_primarys_mtimes(proxied: Cluster) -> None:
    """Each frame reaches the secondary 20 ms late, so the replica's own
    clock (and its coarse timestamps) cannot give an entry the primary's
    time by chance."""
    mounted = proxied
    mounted.mount()
    proxied.proxy.delay(0.02)
    m = mounted.mnt
    changes = [
        ("create", lambda: (m / "f").touch()),
        ("a small write", lambda: (m / "f").write_bytes(b"small")),
        ("a write of 1 MiB", lambda: (m / "big").write_bytes(os.urandom(MiB))),
        ("an overwrite in place", lambda: _pwrite(m / "big", b"x" * 4096, 8192)),
        ("truncate down", lambda: os.truncate(m / "big", 100_000)),
        ("truncate up", lambda: os.truncate(m / "big", 3 * MiB)),
        ("open with O_TRUNC", lambda: os.close(os.open(m / "f", os.O_WRONLY | os.O_TRUNC))),
        ("mkdir", lambda: (m / "a" / "b").mkdir(parents=True)),
        ("mkdir of a second tree", lambda: (m / "c").mkdir()),
        ("a file in a subdirectory", lambda: (m / "a" / "b" / "g").write_bytes(b"g")),
        ("rename across directories", lambda: os.rename(m / "a" / "b" / "g", m / "c" / "g")),
        ("rename of a directory across directories", lambda: os.rename(m / "a" / "b", m / "c" / "b")),
        ("rename over an existing file", lambda: os.rename(m / "c" / "g", m / "f")),
        ("link", lambda: os.link(m / "big", m / "c" / "hard")),
        ("symlink", lambda: os.symlink("../big", m / "c" / "sym")),
        ("mkfifo", lambda: os.mkfifo(m / "c" / "fifo")),
        ("unlink", lambda: (m / "c" / "hard").unlink()),
        ("rmdir", lambda: (m / "c" / "b").rmdir()),
        ("utime of a file", lambda: os.utime(m / "f", ns=(PAST, PAST + 1))),
        ("utime of a directory", lambda: os.utime(m / "c", ns=(PAST, PAST + 2))),
        ("a change in a directory with an explicit mtime", lambda: (m / "c" / "new").touch()),
        ("utime of a symlink itself", lambda: os.utime(m / "c" / "sym", ns=(PAST, PAST + 3), follow_symlinks=False)),
        ("touch to now", lambda: os.utime(m / "big")),
        ("chmod, chown and setxattr (ctime only)", lambda: _attributes(m / "f")),
    ]
    for what, change in changes:
        change()
        assert_same_mtimes(mounted, what)
    replica = mounted.secondary.replica_root()
    assert os.lstat(replica / "c").st_mtime_ns != PAST + 2  # changed again by the touch after it
    assert os.lstat(replica / "c" / "sym").st_mtime_ns == PAST + 3
    mounted.assert_replicated()


def _pwrite(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _attributes(path: Path) -> None:
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.setxattr(path, "user.k", b"v")


def _changes_while_cut(m: Path) -> None:
    """Data, truncates, new entries, moves, removals and utimes: what a quick
    resync must bring over, times included."""
    _pwrite(m / "big", os.urandom(4096), MiB + 4096)  # one dirty region, the size unchanged
    _pwrite(m / "quiet" / "data", os.urandom(100), 5000)  # nor any change to its directory
    os.truncate(m / "small", 3)
    (m / "new" / "deeper").mkdir(parents=True)
    (m / "new" / "deeper" / "file").write_bytes(os.urandom(10_000))
    os.symlink("deeper/file", m / "new" / "sym")
    os.rename(m / "d1" / "moved", m / "d2" / "moved")
    os.rename(m / "d1" / "sub", m / "d2" / "sub")
    (m / "d2" / "gone").unlink()
    (m / "d1" / "empty").rmdir()
    os.utime(m / "d2" / "moved", ns=(PAST, PAST))
    os.utime(m / "d1", ns=(PAST, PAST + 1))


def _tree_before_cut(m: Path) -> None:
    (m / "big").write_bytes(os.urandom(2 * MiB))
    (m / "small").write_bytes(b"small file")
    for d in ("d1/sub", "d1/empty", "d2", "quiet"):
        (m / d).mkdir(parents=True)
    (m / "d1" / "moved").write_bytes(b"moves")
    (m / "d1" / "sub" / "inner").write_bytes(b"inner")
    (m / "d2" / "gone").write_bytes(b"gone")
    (m / "quiet" / "data").write_bytes(os.urandom(20_000))


@pytest.mark.expect_log(LINK_CLOSED)
def test_a_quick_resync_after_a_cut_link_copies_the_times(cluster: Cluster) -> None:
    cluster.mount()
    _tree_before_cut(cluster.mnt)
    cluster.secondary.stop()
    _changes_while_cut(cluster.mnt)
    cluster.wait_state("OutOfSync")
    cluster.secondary.start()
    cluster.wait_state("InSync")
    assert "quick resync complete" in cluster.primary_log()
    assert_same_mtimes(cluster, "the quick resync")
    assert os.lstat(cluster.secondary.replica_root() / "d1").st_mtime_ns == PAST + 1
    cluster.assert_replicated()


def _meddle_with_the_replicas_times(replica: Path) -> None:
    """Times changed behind fsrep's back, and a region of one file changed
    with its mtime put back: only a comparison of contents finds that one."""
    for path in ("small", "d1", "d1/sub", "d1/sub/inner", "."):
        os.utime(replica / path, ns=(PAST, PAST))
    os.utime(replica / "d2" / "sym", ns=(PAST, PAST), follow_symlinks=False)
    before = os.lstat(replica / "big")
    _pwrite(replica / "big", b"corrupt", 3 * 4096)
    os.utime(replica / "big", ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_checksum_resync_repairs_times_and_sets_them_after_the_data(mounted: Cluster) -> None:
    m = mounted.mnt
    _tree_before_cut(m)
    os.symlink("../small", m / "d2" / "sym")
    replica = mounted.secondary.replica_root()
    _meddle_with_the_replicas_times(replica)
    assert tree_differences(mounted.primary_store, replica), "the meddling changed nothing the digest sees"
    done = fsrep_resync(str(m), "--mode", "checksum", "--json")
    assert done.returncode == 0, done.stderr
    assert_same_mtimes(mounted, "the checksum resync")
    mounted.assert_replicated()


def test_a_full_resync_copies_the_times_of_every_kind_of_entry(mounted: Cluster) -> None:
    m = mounted.mnt
    _tree_before_cut(m)
    os.symlink("../small", m / "d2" / "sym")
    os.mkfifo(m / "d2" / "fifo")
    os.link(m / "small", m / "d2" / "hard")
    os.utime(m / "d2" / "sym", ns=(PAST, PAST), follow_symlinks=False)
    done = fsrep_resync(str(m), "--mode", "full")
    assert done.returncode == 0, done.stderr
    assert_same_mtimes(mounted, "the full resync")
    assert os.lstat(mounted.secondary.replica_root() / "d2" / "sym").st_mtime_ns == PAST
    mounted.assert_replicated()


def test_making_fsrep_state_leaves_the_store_roots_mtime(cluster: Cluster) -> None:
    """``.fsrep`` is hidden and never replicated: making it at the first
    mount must not change the root's mtime, which is the clients'."""
    os.utime(cluster.primary_store, ns=(PAST, PAST))
    cluster.mount()
    assert os.lstat(cluster.primary_store).st_mtime_ns == PAST
    assert stat.S_ISDIR(os.lstat(cluster.primary_store / ".fsrep").st_mode)
    (cluster.mnt / "f").touch()
    assert os.lstat(cluster.primary_store).st_mtime_ns != PAST
    assert_same_mtimes(cluster, "a change at the root")


def test_the_digest_tells_trees_apart_by_an_mtime_alone(tmp_path: Path) -> None:
    for side in ("a", "b"):
        (tmp_path / side / "d").mkdir(parents=True)
        (tmp_path / side / "d" / "f").write_bytes(b"same")
        os.symlink("f", tmp_path / side / "d" / "s")
        for path in ("d", "d/f"):
            os.utime(tmp_path / side / path, ns=(PAST, PAST))
        os.utime(tmp_path / side / "d" / "s", ns=(PAST, PAST), follow_symlinks=False)
    assert tree_differences(tmp_path / "a", tmp_path / "b") == []
    for path, follow in (("d/f", True), ("d", True), ("d/s", False)):
        os.utime(tmp_path / "b" / path, ns=(PAST, PAST + 1), follow_symlinks=follow)
        differences = tree_differences(tmp_path / "a", tmp_path / "b")
        assert len(differences) == 1, differences
        assert differences[0].startswith(f"differs: {path}:"), differences
        os.utime(tmp_path / "b" / path, ns=(PAST, PAST), follow_symlinks=follow)
