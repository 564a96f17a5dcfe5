"""Tree: each replicated operation on a plain directory, confined to it.

Runs as root (the suite requires it), so ownership changes are real.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tracking
import transport as tp
from fsrep._apply import remove_tree
from fsrep._tree import RESERVED, Tree
from tests.conftest import deep_chain, entry_states
from transport._frames import ATTR_ALL

XATTR = b"user.fsrep-test"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, with a file the tree must never touch."""
    path = tmp_path / "outside"
    path.mkdir()
    victim = path / "victim"
    victim.write_bytes(b"precious")
    os.chmod(victim, 0o640)
    os.setxattr(victim, XATTR, b"original")
    return path


@pytest.fixture
def tree(root: Path) -> Iterator[Tree]:
    t = Tree(root)
    try:
        yield t
    finally:
        t.close()


def _mkfile(tree: Tree, path: bytes, data: bytes = b"", mode: int = 0o644) -> None:
    tree.apply(tp.Create(seq=1, path=path, mode=mode, uid=0, gid=0))
    if data:
        tree.apply(tp.Write(seq=1, path=path, offset=0, data=data))


# --- each operation on disk ---------------------------------------------------------


def test_create_makes_an_empty_file_with_exact_mode_and_owner(tree: Tree, root: Path) -> None:
    old = os.umask(0o077)
    try:
        tree.apply(tp.Create(seq=1, path=b"f", mode=0o100_4755, uid=1234, gid=5678))
    finally:
        os.umask(old)
    st = os.lstat(root / "f")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (st.st_uid, st.st_gid, st.st_size) == (1234, 5678, 0)


def test_create_over_an_existing_entry_fails(tree: Tree, root: Path) -> None:
    (root / "f").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        tree.apply(tp.Create(seq=1, path=b"f", mode=0o644, uid=0, gid=0))
    assert (root / "f").read_bytes() == b"keep"


def test_write_puts_data_at_the_offset(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"hello world")
    tree.apply(tp.Write(seq=2, path=b"f", offset=6, data=b"there"))
    tree.apply(tp.Write(seq=3, path=b"f", offset=20, data=b"!"))
    assert (root / "f").read_bytes() == b"hello there" + b"\0" * 9 + b"!"


def test_write_runs_put_each_run_at_its_offset(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"." * 10)
    tree.apply(tp.WriteRuns.of(2, b"f", [(1, b"ab"), (6, b"c"), (12, b"de")]))
    assert (root / "f").read_bytes() == b".ab...c..." + b"\0" * 2 + b"de"


def test_write_to_an_existing_file_not_created_by_the_tree(tree: Tree, root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"abc")
    tree.apply(tp.Write(seq=1, path=b"d/f", offset=1, data=b"X"))
    assert (root / "d" / "f").read_bytes() == b"aXc"


def test_write_to_a_missing_file_fails(tree: Tree) -> None:
    with pytest.raises(FileNotFoundError):
        tree.apply(tp.Write(seq=1, path=b"nope", offset=0, data=b"x"))


def test_large_write_is_written_whole(tree: Tree, root: Path) -> None:
    data = os.urandom(tp.MAX_DATA)
    _mkfile(tree, b"big", data)
    assert (root / "big").read_bytes() == data


@pytest.mark.parametrize(("fields", "expect"), [
    (tp.ATTR_MODE, {"mode": 0o2711}),
    (tp.ATTR_UID, {"uid": 42, "gid": 7}),
    (tp.ATTR_GID, {"uid": 3, "gid": 43}),
    (tp.ATTR_UID | tp.ATTR_GID, {"uid": 42, "gid": 43}),
    (tp.ATTR_SIZE, {"size": 3}),
    (tp.ATTR_TIMES, {"atime_ns": 1_000_000_123, "mtime_ns": 2_000_000_456}),
    (tp.ATTR_MTIME, {"mtime_ns": 2_000_000_456}),
    (tp.ATTR_SIZE | tp.ATTR_MTIME, {"size": 3, "mtime_ns": 2_000_000_456}),
    (ATTR_ALL, {"mode": 0o2711, "uid": 42, "gid": 43, "size": 3, "atime_ns": 1_000_000_123,
                "mtime_ns": 2_000_000_456}),
], ids=["mode", "uid", "gid", "owner", "size", "times", "mtime", "truncate", "all"])
def test_setattr_changes_only_the_fields_it_names(tree: Tree, root: Path, fields: int, expect: dict) -> None:
    _mkfile(tree, b"f", b"0123456789", mode=0o600)
    os.chown(root / "f", 3, 7)
    before = os.lstat(root / "f")
    tree.apply(tp.SetAttr(seq=1, path=b"f", fields=fields, mode=0o100_2711, uid=42, gid=43, size=3,
                          atime_ns=1_000_000_123, mtime_ns=2_000_000_456))
    st = os.lstat(root / "f")
    got = {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
           "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns}
    unchanged = {"mode": stat.S_IMODE(before.st_mode), "uid": before.st_uid, "gid": before.st_gid,
                 "size": before.st_size, "atime_ns": before.st_atime_ns}
    for key, value in got.items():
        if key in expect:
            assert value == expect[key], key
        elif key in unchanged:
            assert value == unchanged[key], key


def test_setattr_size_extends_with_zeros(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"ab")
    tree.apply(tp.SetAttr(seq=1, path=b"f", fields=tp.ATTR_SIZE, size=5))
    assert (root / "f").read_bytes() == b"ab\0\0\0"


def test_setattr_on_a_directory_and_the_root(tree: Tree, root: Path) -> None:
    tree.apply(tp.MkDir(seq=1, path=b"d", mode=0o755, uid=0, gid=0))
    tree.apply(tp.SetAttr(seq=2, path=b"d", fields=tp.ATTR_MODE, mode=0o700))
    tree.apply(tp.SetAttr(seq=3, path=b"", fields=tp.ATTR_MODE | tp.ATTR_UID, mode=0o751, uid=99))
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o751
    assert os.lstat(root).st_uid == 99


def test_mknod_makes_a_fifo_with_mode_and_owner(tree: Tree, root: Path) -> None:
    tree.apply(tp.MkNod(seq=1, path=b"fifo", mode=stat.S_IFIFO | 0o620, rdev=0, uid=11, gid=12))
    st = os.lstat(root / "fifo")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o620
    assert (st.st_uid, st.st_gid) == (11, 12)


def test_mknod_makes_a_device_node(tree: Tree, root: Path) -> None:
    tree.apply(tp.MkNod(seq=1, path=b"null", mode=stat.S_IFCHR | 0o600, rdev=os.makedev(1, 3), uid=0, gid=0))
    st = os.lstat(root / "null")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)


def test_mkdir_makes_a_directory_with_exact_mode_and_owner(tree: Tree, root: Path) -> None:
    tree.apply(tp.MkDir(seq=1, path=b"d", mode=0o2750, uid=21, gid=22))
    tree.apply(tp.MkDir(seq=2, path=b"d/e", mode=0o700, uid=0, gid=0))
    st = os.lstat(root / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o2750
    assert (st.st_uid, st.st_gid) == (21, 22)
    assert (root / "d" / "e").is_dir()


def test_unlink_removes_a_file_but_not_a_directory(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"x")
    tree.apply(tp.Unlink(seq=1, path=b"f"))
    assert not (root / "f").exists()
    (root / "d").mkdir()
    with pytest.raises(OSError) as caught:
        tree.apply(tp.Unlink(seq=2, path=b"d"))
    assert caught.value.errno in (errno.EISDIR, errno.EPERM)
    assert (root / "d").is_dir()


def test_rmdir_removes_an_empty_directory_only(tree: Tree, root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    with pytest.raises(OSError) as caught:
        tree.apply(tp.RmDir(seq=1, path=b"d"))
    assert caught.value.errno == errno.ENOTEMPTY
    tree.apply(tp.RmDir(seq=2, path=b"d/e"))
    tree.apply(tp.RmDir(seq=3, path=b"d"))
    assert list(root.iterdir()) == []


def test_rename_moves_and_replaces(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"a", b"A")
    _mkfile(tree, b"b", b"B")
    (root / "d").mkdir()
    tree.apply(tp.Rename(seq=1, old=b"a", new=b"d/a2"))
    tree.apply(tp.Rename(seq=2, old=b"d/a2", new=b"b"))
    assert sorted(p.name for p in root.iterdir()) == ["b", "d"]
    assert (root / "b").read_bytes() == b"A"


def test_rename_noreplace_refuses_an_existing_target(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"a", b"A")
    _mkfile(tree, b"b", b"B")
    with pytest.raises(FileExistsError):
        tree.apply(tp.Rename(seq=1, old=b"a", new=b"b", flags=tp.RENAME_NOREPLACE))
    tree.apply(tp.Rename(seq=2, old=b"a", new=b"c", flags=tp.RENAME_NOREPLACE))
    assert (root / "b").read_bytes() == b"B"
    assert (root / "c").read_bytes() == b"A"


def test_rename_exchange_swaps_two_entries(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"a", b"A")
    tree.apply(tp.MkDir(seq=1, path=b"d", mode=0o755, uid=0, gid=0))
    tree.apply(tp.Rename(seq=2, old=b"a", new=b"d", flags=tp.RENAME_EXCHANGE))
    assert (root / "a").is_dir()
    assert (root / "d").read_bytes() == b"A"


def test_writes_follow_renames_of_the_file_and_its_directory(tree: Tree, root: Path) -> None:
    tree.apply(tp.MkDir(seq=1, path=b"d", mode=0o755, uid=0, gid=0))
    _mkfile(tree, b"d/f", b"1")
    tree.apply(tp.Rename(seq=2, old=b"d", new=b"e"))
    tree.apply(tp.MkDir(seq=3, path=b"d", mode=0o755, uid=0, gid=0))
    _mkfile(tree, b"d/f", b"new")
    tree.apply(tp.Write(seq=4, path=b"e/f", offset=1, data=b"2"))
    assert (root / "e" / "f").read_bytes() == b"12"
    assert (root / "d" / "f").read_bytes() == b"new"


def test_a_recreated_path_gets_the_writes_not_the_old_file(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"old")
    os.link(root / "f", root / "keep")
    tree.apply(tp.Unlink(seq=1, path=b"f"))
    _mkfile(tree, b"f")
    tree.apply(tp.Write(seq=2, path=b"f", offset=0, data=b"NEW"))
    assert (root / "f").read_bytes() == b"NEW"
    assert (root / "keep").read_bytes() == b"old"


def test_writes_to_more_files_than_the_cache_holds_all_land(tree: Tree, root: Path) -> None:
    names = [f"f{i}".encode() for i in range(150)]
    for name in names:
        _mkfile(tree, name)
    for round_ in range(2):
        for name in names:
            tree.apply(tp.Write(seq=1, path=name, offset=round_, data=name[-1:]))
    assert all((root / n.decode()).read_bytes() == n[-1:] * 2 for n in names)


def test_rename_between_directories_deeper_than_the_cache(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"payload")
    deep = b"/".join([b"d"] * 100)
    (root / deep.decode()).mkdir(parents=True)
    (root / "src").mkdir()
    tree.apply(tp.Rename(seq=1, old=b"f", new=b"src/f"))
    tree.forget_all()
    tree.apply(tp.Rename(seq=2, old=b"src/f", new=deep + b"/moved"))
    assert (root / deep.decode() / "moved").read_bytes() == b"payload"
    assert list((root / "src").iterdir()) == []
    tree.forget_all()
    tree.apply(tp.Link(seq=3, target=deep + b"/moved", new=b"src/again"))
    tree.forget_all()
    tree.apply(tp.Link(seq=4, target=b"src/again", new=deep + b"/linked"))
    assert os.lstat(root / deep.decode() / "linked").st_nlink == 3


def test_link_adds_a_name_to_the_same_inode(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"a", b"A")
    (root / "d").mkdir()
    tree.apply(tp.Link(seq=1, target=b"a", new=b"d/b"))
    assert os.lstat(root / "a").st_ino == os.lstat(root / "d" / "b").st_ino
    assert os.lstat(root / "a").st_nlink == 2


def test_link_of_a_symlink_links_the_symlink_itself(tree: Tree, root: Path, outside: Path) -> None:
    os.symlink(outside / "victim", root / "s")
    tree.apply(tp.Link(seq=1, target=b"s", new=b"s2"))
    assert os.path.islink(root / "s2")
    assert os.lstat(root / "s2").st_ino == os.lstat(root / "s").st_ino


def test_symlink_stores_its_target_verbatim_and_owns_the_link(tree: Tree, root: Path) -> None:
    tree.apply(tp.Symlink(seq=1, path=b"abs", target=b"/definitely/not/here", uid=31, gid=32))
    tree.apply(tp.Symlink(seq=2, path=b"rel", target=b"../../x", uid=0, gid=0))
    assert os.readlink(root / "abs") == "/definitely/not/here"
    assert os.readlink(root / "rel") == "../../x"
    st = os.lstat(root / "abs")
    assert stat.S_ISLNK(st.st_mode)
    assert (st.st_uid, st.st_gid) == (31, 32)
    assert tree.readlink(b"abs") == b"/definitely/not/here"


def test_setxattr_and_removexattr(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f")
    tree.apply(tp.SetXattr(seq=1, path=b"f", name=XATTR, value=b"\0value"))
    tree.apply(tp.SetXattr(seq=2, path=b"", name=XATTR, value=b"on root"))
    assert os.getxattr(root / "f", XATTR) == b"\0value"
    assert tree.getxattr(b"", XATTR) == b"on root"
    assert XATTR in tree.listxattr(b"f")
    tree.apply(tp.RemoveXattr(seq=3, path=b"f", name=XATTR))
    assert XATTR not in [os.fsencode(n) for n in os.listxattr(root / "f")]
    with pytest.raises(OSError) as caught:
        tree.apply(tp.RemoveXattr(seq=4, path=b"f", name=XATTR))
    assert caught.value.errno == errno.ENODATA


@pytest.mark.parametrize(("path", "whole"), [(b"f", 0), (b"d", 0), (b"fifo", 0), (b"", 0), (b"", 1)])
def test_fsync_of_files_directories_and_the_whole_tree(tree: Tree, root: Path, path: bytes, whole: int) -> None:
    _mkfile(tree, b"f", b"x")
    (root / "d").mkdir()
    os.mkfifo(root / "fifo")
    tree.apply(tp.Fsync(seq=1, path=path, whole=whole))


@pytest.mark.parametrize(("datasync", "called"), [(0, "fsync"), (1, "fdatasync")])
def test_fsync_with_datasync_is_an_fdatasync(tree: Tree, monkeypatch: pytest.MonkeyPatch,
                                             datasync: int, called: str) -> None:
    _mkfile(tree, b"f", b"x")
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: (calls.append(name), real(fd))[1])
    tree.apply(tp.Fsync(seq=1, path=b"f", datasync=datasync))
    assert calls == [called]


def test_fsync_of_a_missing_file_fails(tree: Tree) -> None:
    with pytest.raises(FileNotFoundError):
        tree.apply(tp.Fsync(seq=1, path=b"nope"))


def test_remove_drops_a_file_a_subtree_or_nothing(tree: Tree, root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "f").write_bytes(b"x")
    (root / "g").write_bytes(b"y")
    tree.apply(tp.Remove(seq=1, path=b"d"))
    tree.apply(tp.Remove(seq=2, path=b"g"))
    tree.apply(tp.Remove(seq=3, path=b"never-was"))
    assert list(root.iterdir()) == []


def test_purge_empties_the_root_but_keeps_fsrep(tree: Tree, root: Path) -> None:
    (root / RESERVED.decode()).mkdir()
    (root / RESERVED.decode() / "state").write_bytes(b"s")
    (root / "d" / "e").mkdir(parents=True)
    (root / "f").write_bytes(b"x")
    os.symlink("d", root / "s")
    tree.apply(tp.Purge(seq=1))
    assert [p.name for p in root.iterdir()] == [".fsrep"]
    assert (root / ".fsrep" / "state").read_bytes() == b"s"


def test_entries_are_sorted_paged_and_hide_fsrep(tree: Tree, root: Path) -> None:
    (root / RESERVED.decode()).mkdir()
    for name in ("c", "a", "b"):
        (root / name).write_bytes(name.encode() * 3)
    entries, more = tree.entries(b"", b"", 10_000)
    assert [e.name for e in entries] == [b"a", b"b", b"c"]
    assert not more
    assert entries[0].size == 3
    assert stat.S_ISREG(entries[0].mode)
    assert entries[0].nlink == 1
    first, more = tree.entries(b"", b"", 1)
    assert [e.name for e in first] == [b"a"]
    assert more
    rest, more = tree.entries(b"", b"a", 10_000)
    assert [e.name for e in rest] == [b"b", b"c"]
    assert not more


def test_listdir_hides_fsrep_only_at_the_root(tree: Tree, root: Path) -> None:
    (root / ".fsrep").mkdir()
    (root / "d" / ".fsrep").mkdir(parents=True)
    assert tree.listdir(b"") == [b"d"]
    assert tree.listdir(b"d") == [b".fsrep"]


def test_fsrep_below_the_root_is_an_ordinary_name(tree: Tree, root: Path) -> None:
    (root / "d").mkdir()
    _mkfile(tree, b"d/.fsrep", b"ok")
    assert (root / "d" / ".fsrep").read_bytes() == b"ok"


# --- times ---------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Tree, Tree]]:
    """A primary's tree and a replica's, both empty."""
    trees = []
    for name in ("primary", "replica"):
        (tmp_path / name).mkdir()
        trees.append(Tree(tmp_path / name))
    try:
        yield trees[0], trees[1]
    finally:
        for t in trees:
            t.close()


def _mtimes(top: Path) -> dict[str, int]:
    """The mtime of every entry below *top* and of *top* itself, links never followed."""
    out = {".": os.lstat(top).st_mtime_ns}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, top)] = os.lstat(path).st_mtime_ns
    return out


PAST = 1_000_000_000_000_000_007  # 2001: a time no change made now can give an entry


def _mirror(primary: Tree, replica: Tree, op: tp.Operation) -> tp.Operation:
    """Apply *op* on the primary's tree, age what it touched there (so the
    replica's own clock can never match by chance), stamp it and apply the
    frame to the replica, as the two daemons do."""
    primary.apply(op)
    for i, (path, _) in enumerate(primary.stamped(op).mtimes()):
        os.utime(os.path.join(primary.root, os.fsdecode(path)), ns=(PAST, PAST + i), follow_symlinks=False)
    sent = primary.stamped(op)
    replica.apply(sent)
    return sent


CHANGES: list[tp.Operation] = [
    tp.MkDir(seq=1, path=b"a", mode=0o755, uid=0, gid=0),
    tp.MkDir(seq=2, path=b"b", mode=0o755, uid=0, gid=0),
    tp.Create(seq=3, path=b"a/f", mode=0o644, uid=0, gid=0),
    tp.Create(seq=4, path=b"a/g", mode=0o644, uid=0, gid=0),
    tp.Symlink(seq=5, path=b"a/s", target=b"f", uid=0, gid=0),
    tp.MkNod(seq=6, path=b"b/fifo", mode=stat.S_IFIFO | 0o644, rdev=0, uid=0, gid=0),
    tp.Link(seq=7, target=b"a/f", new=b"b/hard"),
    tp.Rename(seq=8, old=b"a/g", new=b"b/g"),
    tp.Rename(seq=9, old=b"b/g", new=b"b/hard"),  # over an existing entry
    tp.Rename(seq=10, old=b"a/s", new=b"b/fifo", flags=tp.RENAME_EXCHANGE),
    tp.Unlink(seq=11, path=b"a/s"),  # the fifo, since the exchange
    tp.MkDir(seq=12, path=b"a/d", mode=0o755, uid=0, gid=0),
    tp.RmDir(seq=13, path=b"a/d"),
    tp.Rename(seq=14, old=b"a", new=b"b/a"),  # a directory to another parent
    tp.Unlink(seq=15, path=b"b/hard"),
]


def test_namespace_changes_leave_the_replica_with_the_primarys_mtimes(pair: tuple[Tree, Tree]) -> None:
    primary, replica = pair
    for op in CHANGES:
        sent = _mirror(primary, replica, op)
        assert sent.mtimes(), f"{op} carries no times"
        assert all(mtime != tp.NO_TIME for _, mtime in sent.mtimes())
        assert _mtimes(Path(replica.root)) == _mtimes(Path(primary.root)), type(op).__name__


def test_a_frame_sets_only_the_mtime_and_leaves_the_atime(pair: tuple[Tree, Tree]) -> None:
    _, replica = pair
    replica.apply(tp.MkDir(seq=1, path=b"d", mode=0o755, uid=0, gid=0))
    replica.apply(tp.Create(seq=2, path=b"d/f", mode=0o644, uid=0, gid=0))
    os.utime(Path(replica.root, "d"), ns=(5, 6))
    os.utime(Path(replica.root, "d", "f"), ns=(7, 8))
    replica.apply(tp.Create(seq=3, path=b"d/g", mode=0o644, uid=0, gid=0, parent_mtime_ns=PAST))
    replica.apply(tp.Write(seq=4, path=b"d/f", offset=0, data=b"x", mtime_ns=PAST + 1))
    replica.apply(tp.SetAttr(seq=5, path=b"d/f", fields=tp.ATTR_SIZE | tp.ATTR_MTIME, size=0, mtime_ns=PAST + 2))
    d, f = os.lstat(Path(replica.root, "d")), os.lstat(Path(replica.root, "d", "f"))
    assert (d.st_atime_ns, d.st_mtime_ns) == (5, PAST)
    assert (f.st_atime_ns, f.st_mtime_ns) == (7, PAST + 2)


@pytest.mark.parametrize("make", [
    lambda mtime: tp.WriteRuns.of(2, b"f", [(0, b"ab"), (8192, b"c")], mtime),
    lambda mtime: tp.Punch(seq=2, path=b"f", runs=tp.pack_runs([(0, 4096)]), mtime_ns=mtime),
    lambda mtime: tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_MTIME, mtime_ns=mtime),
], ids=["WriteRuns", "Punch", "SetAttr.mtime"])
def test_data_frames_set_the_files_mtime(tree: Tree, root: Path, make: Callable[[int], tp.Operation]) -> None:
    _mkfile(tree, b"f", b"x" * 10000)
    tree.apply(make(-PAST))  # before the epoch is a time too
    assert os.lstat(root / "f").st_mtime_ns == -PAST


def test_frames_without_times_leave_them_to_the_system_call(tree: Tree, root: Path) -> None:
    (root / "d").mkdir()
    os.utime(root / "d", ns=(PAST, PAST))
    tree.apply(tp.Create(seq=1, path=b"d/f", mode=0o644, uid=0, gid=0))  # as a resync sends it
    assert os.lstat(root / "d").st_mtime_ns != PAST


def test_the_root_takes_the_mtime_of_changes_in_it(pair: tuple[Tree, Tree]) -> None:
    primary, replica = pair
    _mirror(primary, replica, tp.Create(seq=1, path=b"f", mode=0o644, uid=0, gid=0))
    assert os.lstat(replica.root).st_mtime_ns == os.lstat(primary.root).st_mtime_ns == PAST + 1


def test_stamped_truncate_carries_the_new_mtime_unless_it_sets_the_times(tree: Tree, root: Path) -> None:
    _mkfile(tree, b"f", b"abc")
    op = tp.SetAttr(seq=1, path=b"f", fields=tp.ATTR_SIZE, size=1)
    tree.apply(op)
    sent = tree.stamped(op)
    assert isinstance(sent, tp.SetAttr)
    assert sent.fields == tp.ATTR_SIZE | tp.ATTR_MTIME
    assert sent.mtime_ns == os.lstat(root / "f").st_mtime_ns
    explicit = tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_SIZE | tp.ATTR_TIMES, size=0, atime_ns=1, mtime_ns=2)
    assert tree.stamped(explicit) is explicit
    chmod = tp.SetAttr(seq=3, path=b"f", fields=tp.ATTR_MODE, mode=0o600)  # ctime only
    assert tree.stamped(chmod) is chmod


# --- confinement --------------------------------------------------------------------


@pytest.fixture(params=["absolute", "relative"])
def escape(request: pytest.FixtureRequest, root: Path, outside: Path) -> Path:
    """root/link and root/sub/link: symlinks to the outside directory."""
    target = str(outside) if request.param == "absolute" else os.path.relpath(outside, root)
    os.symlink(target, root / "link")
    (root / "sub").mkdir()
    os.symlink(str(outside) if request.param == "absolute" else os.path.relpath(outside, root / "sub"),
               root / "sub" / "link")
    (root / "mine").write_bytes(b"inside")
    return outside


THROUGH_A_LINK: list[Callable[[bytes], tp.Operation]] = [
    lambda p: tp.Create(seq=1, path=p + b"/evil", mode=0o644, uid=0, gid=0),
    lambda p: tp.Write(seq=1, path=p + b"/victim", offset=0, data=b"PWNED"),
    lambda p: tp.MkDir(seq=1, path=p + b"/evil", mode=0o755, uid=0, gid=0),
    lambda p: tp.MkNod(seq=1, path=p + b"/evil", mode=stat.S_IFIFO | 0o644, rdev=0, uid=0, gid=0),
    lambda p: tp.Symlink(seq=1, path=p + b"/evil", target=b"/", uid=0, gid=0),
    lambda p: tp.Unlink(seq=1, path=p + b"/victim"),
    lambda p: tp.RmDir(seq=1, path=p + b"/victim"),
    lambda p: tp.Remove(seq=1, path=p + b"/victim"),
    lambda p: tp.Rename(seq=1, old=p + b"/victim", new=b"stolen"),
    lambda p: tp.Rename(seq=1, old=b"mine", new=p + b"/planted"),
    lambda p: tp.Rename(seq=1, old=b"mine", new=p + b"/victim", flags=tp.RENAME_EXCHANGE),
    lambda p: tp.Link(seq=1, target=p + b"/victim", new=b"stolen"),
    lambda p: tp.Link(seq=1, target=b"mine", new=p + b"/planted"),
    lambda p: tp.SetAttr(seq=1, path=p + b"/victim", fields=tp.ATTR_MODE, mode=0o777),
    lambda p: tp.SetAttr(seq=1, path=p + b"/victim", fields=tp.ATTR_UID | tp.ATTR_GID, uid=666, gid=666),
    lambda p: tp.SetAttr(seq=1, path=p + b"/victim", fields=tp.ATTR_SIZE, size=0),
    lambda p: tp.SetAttr(seq=1, path=p + b"/victim", fields=tp.ATTR_TIMES),
    lambda p: tp.SetXattr(seq=1, path=p + b"/victim", name=XATTR, value=b"PWNED"),
    lambda p: tp.RemoveXattr(seq=1, path=p + b"/victim", name=XATTR),
    lambda p: tp.Fsync(seq=1, path=p + b"/victim"),
    lambda p: tp.Write(seq=1, path=p + b"/victim", offset=0, data=b"", mtime_ns=0),
    lambda p: tp.SetAttr(seq=1, path=p + b"/victim", fields=tp.ATTR_MTIME, mtime_ns=0),
    lambda p: tp.Create(seq=1, path=p + b"/evil", mode=0o644, uid=0, gid=0, mtime_ns=0, parent_mtime_ns=0),
    lambda p: tp.Unlink(seq=1, path=p + b"/victim", parent_mtime_ns=0),
    lambda p: tp.Rename(seq=1, old=b"mine", new=p + b"/planted", old_parent_mtime_ns=0, new_parent_mtime_ns=0),
]
THROUGH_A_LINK_IDS = ["Create", "Write", "MkDir", "MkNod", "Symlink", "Unlink", "RmDir", "Remove", "Rename.old",
                      "Rename.new", "Rename.exchange", "Link.target", "Link.new", "SetAttr.mode", "SetAttr.owner",
                      "SetAttr.size", "SetAttr.times", "SetXattr", "RemoveXattr", "Fsync", "Write.mtime",
                      "SetAttr.mtime", "Create.times", "Unlink.times", "Rename.times"]


@pytest.mark.parametrize("parent", [b"link", b"sub/link"])
@pytest.mark.parametrize("build", THROUGH_A_LINK, ids=THROUGH_A_LINK_IDS)
def test_a_symlink_in_the_parent_chain_fails_and_nothing_changes_outside(
        tree: Tree, root: Path, escape: Path, parent: bytes, build: Callable[[bytes], tp.Operation]) -> None:
    before_outside, before_root = entry_states(escape), entry_states(root)
    with pytest.raises(OSError) as caught:
        tree.apply(build(parent))
    assert caught.value.errno in (errno.ENOTDIR, errno.ELOOP)
    assert entry_states(escape) == before_outside
    assert entry_states(root) == before_root


@pytest.mark.parametrize("read", [
    lambda t: t.lstat(b"link/victim"), lambda t: t.listdir(b"link"), lambda t: t.readlink(b"link/victim"),
    lambda t: t.getxattr(b"link/victim", XATTR), lambda t: t.listxattr(b"link/victim"),
    lambda t: t.entries(b"link", b"", 1000), lambda t: os.close(t.open(b"link/victim", os.O_RDONLY)),
], ids=["lstat", "listdir", "readlink", "getxattr", "listxattr", "entries", "open"])
def test_reads_through_a_symlinked_parent_fail(tree: Tree, escape: Path, read) -> None:
    with pytest.raises(OSError):
        read(tree)


LAST_IS_A_LINK: list[Callable[[], tp.Operation]] = [
    lambda: tp.Write(seq=1, path=b"flink", offset=0, data=b"PWNED"),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=tp.ATTR_MODE, mode=0o777),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=tp.ATTR_UID | tp.ATTR_GID, uid=666, gid=666),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=tp.ATTR_SIZE, size=0),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=tp.ATTR_TIMES, atime_ns=0, mtime_ns=0),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=ATTR_ALL, mode=0o777, uid=666, gid=666, size=0),
    lambda: tp.SetXattr(seq=1, path=b"flink", name=XATTR, value=b"PWNED"),
    lambda: tp.RemoveXattr(seq=1, path=b"flink", name=XATTR),
    lambda: tp.Create(seq=1, path=b"flink", mode=0o777, uid=666, gid=666),
    lambda: tp.MkNod(seq=1, path=b"flink", mode=stat.S_IFIFO | 0o777, rdev=0, uid=0, gid=0),
    lambda: tp.Fsync(seq=1, path=b"flink"),
    lambda: tp.Unlink(seq=1, path=b"flink"),
    lambda: tp.Remove(seq=1, path=b"flink"),
    lambda: tp.Rename(seq=1, old=b"flink", new=b"moved"),
    lambda: tp.Link(seq=1, target=b"flink", new=b"hard"),
    lambda: tp.Write(seq=1, path=b"flink", offset=0, data=b"PWNED", mtime_ns=0),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=tp.ATTR_MTIME, mtime_ns=0),
    lambda: tp.SetAttr(seq=1, path=b"flink", fields=tp.ATTR_SIZE | tp.ATTR_MTIME, size=0, mtime_ns=0),
    lambda: tp.Rename(seq=1, old=b"flink", new=b"moved", old_parent_mtime_ns=0, new_parent_mtime_ns=0),
    lambda: tp.Link(seq=1, target=b"flink", new=b"hard", parent_mtime_ns=0),
]
LAST_IS_A_LINK_IDS = ["Write", "SetAttr.mode", "SetAttr.owner", "SetAttr.size", "SetAttr.times", "SetAttr.all",
                      "SetXattr", "RemoveXattr", "Create", "MkNod", "Fsync", "Unlink", "Remove", "Rename", "Link",
                      "Write.mtime", "SetAttr.mtime", "SetAttr.truncate", "Rename.times", "Link.times"]


@pytest.mark.parametrize("build", LAST_IS_A_LINK, ids=LAST_IS_A_LINK_IDS)
def test_a_symlink_as_the_last_component_is_never_followed(
        tree: Tree, root: Path, outside: Path, build: Callable[[], tp.Operation]) -> None:
    os.symlink(outside / "victim", root / "flink")
    before = entry_states(outside)
    try:
        tree.apply(build())
    except OSError:
        pass  # refusing is fine; acting on the link itself is fine; following it is not
    assert entry_states(outside) == before
    assert (outside / "victim").read_bytes() == b"precious"


def test_a_write_through_a_symlink_is_refused(tree: Tree, root: Path, outside: Path) -> None:
    os.symlink(outside / "victim", root / "flink")
    with pytest.raises(OSError) as caught:
        tree.apply(tp.Write(seq=1, path=b"flink", offset=0, data=b"PWNED"))
    assert caught.value.errno == errno.ELOOP


def test_directory_symlink_as_the_last_component_is_removed_not_followed(
        tree: Tree, root: Path, escape: Path) -> None:
    before = entry_states(escape)
    with pytest.raises(OSError):
        tree.apply(tp.RmDir(seq=1, path=b"link"))
    with pytest.raises(FileExistsError):
        tree.apply(tp.MkDir(seq=1, path=b"link", mode=0o755, uid=0, gid=0))
    tree.apply(tp.Remove(seq=2, path=b"link"))
    tree.apply(tp.Purge(seq=3))
    assert list(root.iterdir()) == []
    assert entry_states(escape) == before


# --- the reserved name and unsafe paths ---------------------------------------------


RESERVED_OPS: list[Callable[[bytes], tp.Operation]] = [
    lambda p: tp.Create(seq=1, path=p, mode=0o644, uid=0, gid=0),
    lambda p: tp.Write(seq=1, path=p, offset=0, data=b"x"),
    lambda p: tp.MkDir(seq=1, path=p, mode=0o755, uid=0, gid=0),
    lambda p: tp.Unlink(seq=1, path=p),
    lambda p: tp.RmDir(seq=1, path=p),
    lambda p: tp.Remove(seq=1, path=p),
    lambda p: tp.Rename(seq=1, old=p, new=b"taken"),
    lambda p: tp.Rename(seq=1, old=b"mine", new=p),
    lambda p: tp.Link(seq=1, target=p, new=b"taken"),
    lambda p: tp.Link(seq=1, target=b"mine", new=p),
    lambda p: tp.Symlink(seq=1, path=p, target=b"x", uid=0, gid=0),
    lambda p: tp.SetAttr(seq=1, path=p, fields=tp.ATTR_MODE, mode=0o777),
    lambda p: tp.SetXattr(seq=1, path=p, name=XATTR, value=b"x"),
    lambda p: tp.Fsync(seq=1, path=p),
]
RESERVED_IDS = ["Create", "Write", "MkDir", "Unlink", "RmDir", "Remove", "Rename.old", "Rename.new", "Link.target",
                "Link.new", "Symlink", "SetAttr", "SetXattr", "Fsync"]


@pytest.mark.parametrize("path", [b".fsrep", b".fsrep/state", b".fsrep/sub/state"])
@pytest.mark.parametrize("build", RESERVED_OPS, ids=RESERVED_IDS)
def test_no_operation_may_name_fsrep_at_the_root(tree: Tree, root: Path, path: bytes,
                                                   build: Callable[[bytes], tp.Operation]) -> None:
    (root / ".fsrep" / "sub").mkdir(parents=True)
    (root / ".fsrep" / "state").write_bytes(b"s")
    (root / ".fsrep" / "sub" / "state").write_bytes(b"s")
    (root / "mine").write_bytes(b"m")
    before = entry_states(root)
    with pytest.raises(OSError) as caught:
        tree.apply(build(path))
    assert caught.value.errno == errno.EPERM
    assert entry_states(root) == before


@pytest.mark.parametrize("read", [
    lambda t: t.lstat(b".fsrep"), lambda t: t.listdir(b".fsrep"), lambda t: t.lstat(b".fsrep/state"),
    lambda t: t.entries(b".fsrep", b"", 1000),
], ids=["lstat", "listdir", "lstat-inside", "entries"])
def test_fsrep_cannot_be_read_through_the_tree(tree: Tree, root: Path, read) -> None:
    (root / ".fsrep").mkdir()
    (root / ".fsrep" / "state").write_bytes(b"s")
    with pytest.raises(OSError) as caught:
        read(tree)
    assert caught.value.errno == errno.EPERM


@pytest.mark.parametrize("path", [b"..", b"../x", b"a/../../x", b"/etc/passwd", b"./x", b"a//b"])
def test_escaping_paths_cannot_even_be_built(path: bytes) -> None:
    with pytest.raises(tp.LocalProtocolError):
        tp.Write(seq=1, path=path, offset=0, data=b"x")
    with pytest.raises(tp.LocalProtocolError):
        tp.Rename(seq=1, old=b"a", new=path)


@pytest.mark.parametrize("path", [b"..", b"../x", b"/etc"])
def test_tree_reads_refuse_escaping_paths(tree: Tree, path: bytes) -> None:
    with pytest.raises(tp.LocalProtocolError):
        tree.lstat(path)
    with pytest.raises(tp.LocalProtocolError):
        tree.listdir(path)


def test_the_root_itself_has_no_parent(tree: Tree) -> None:
    with pytest.raises(OSError) as caught:
        tree.at(b"")
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        tree.apply(tp.Unlink(seq=1, path=b""))


def test_keepxattrs_removes_the_others(tree: Tree, root: Path) -> None:
    (root / "f").write_text("x")
    for name in ("user.a", "user.b", "user.c"):
        os.setxattr(root / "f", name, b"v")
    tree.apply(tp.KeepXattrs(seq=1, path=b"f", names=b"user.b"))
    assert os.listxattr(root / "f") == ["user.b"]
    tree.apply(tp.KeepXattrs(seq=2, path=b"f", names=b""))
    assert os.listxattr(root / "f") == []


# --- one store, several consistency groups ---------------------------------------------


def test_the_default_groups_tree_neither_lists_nor_reaches_a_hidden_group_root(root: Path, tree: Tree) -> None:
    (root / "vms" / "vm1").mkdir(parents=True)
    (root / "vms" / "vm1" / "disk").write_bytes(b"vm")
    (root / "vms" / "notes").write_bytes(b"n")
    default = tree.subtree(hidden=[b"vms/vm1"])
    try:
        assert default.listdir(b"vms") == [b"notes"]
        assert [path for path, _ in default.walk()] == [b"vms", b"vms/notes"]
        for path in (b"vms/vm1", b"vms/vm1/disk"):
            with pytest.raises(OSError) as caught:
                default.lstat(path)
            assert caught.value.errno == errno.EXDEV
        assert tree.listdir(b"vms") != default.listdir(b"vms"), "the whole store's tree must list everything"
    finally:
        default.close()


def test_a_rename_through_one_groups_tree_drops_what_the_others_cached(root: Path, tree: Tree) -> None:
    (root / "g" / "a" / "sub").mkdir(parents=True)
    group = tree.subtree(b"g")
    try:
        tree.lstat(b"g/a/sub")  # caches the descriptors of g and g/a
        group.apply(tp.Rename(seq=1, old=b"a", new=b"b", flags=0))
        (root / "g" / "a").mkdir()  # a new directory where the cached one was
        (root / "g" / "a" / "other").mkdir()
        (root / "g" / "a" / "other" / "x").write_bytes(b"")
        # g/a/other is reached through the cached descriptor of g/a, unless the rename dropped it.
        assert tree.listdir(b"g/a/other") == [b"x"]
    finally:
        group.close()


# --- data operations touch regular files only ---------------------------------------------


@pytest.fixture
def nodes(tree: Tree, root: Path) -> list[bytes]:
    """A character device (the harmless /dev/zero's numbers) and a FIFO:
    opening either would write to a device or block."""
    tree.apply(tp.MkNod(seq=1, path=b"dev", mode=stat.S_IFCHR | 0o600, rdev=os.makedev(1, 5), uid=0, gid=0))
    tree.apply(tp.MkNod(seq=2, path=b"fifo", mode=stat.S_IFIFO | 0o600, rdev=0, uid=0, gid=0))
    return [b"dev", b"fifo"]


@pytest.mark.parametrize("make", [
    lambda path: tp.Write(seq=3, path=path, offset=0, data=b"pwned"),
    lambda path: tp.WriteRuns.of(3, path, [(0, b"pwned")]),
    lambda path: tp.SetAttr(seq=3, path=path, fields=tp.ATTR_SIZE, size=0),
])
def test_data_operations_on_a_device_node_or_fifo_are_refused_without_opening_it(
        tree: Tree, root: Path, nodes: list[bytes], make: Callable[[bytes], tp.Operation]) -> None:
    for path in nodes:
        with pytest.raises(OSError) as caught:
            tree.apply(make(path))
        assert caught.value.errno == errno.EINVAL, path
    assert stat.S_ISCHR(os.lstat(root / "dev").st_mode)
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Fail instead of blocking forever (opening a FIFO waits for a writer)."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds}s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_fsync_and_digests_of_nodes_never_open_them(tree: Tree, nodes: list[bytes]) -> None:
    with _deadline(5):
        for path in nodes:
            tree.apply(tp.Fsync(seq=3, path=path))
            assert tree.digests(path, 0, 2) == tracking.region_digests(b"", 2)
        with pytest.raises(OSError) as caught:
            tree.open_regular(b"fifo", os.O_RDONLY)
        assert caught.value.errno == errno.EINVAL


# --- trees deeper than Python's stack ---------------------------------------------------------


DEEP = 3000  # levels: past the recursion limit (1000) and the default open-file limit (1024)


def test_a_cold_cache_reaches_the_bottom_of_a_deep_tree(root: Path) -> None:
    bottom = deep_chain(root, DEEP)
    tree = Tree(root)  # nothing cached
    try:
        tree.apply(tp.Write(seq=1, path=bottom + b"/f", offset=0, data=b"deep"))
        assert tree.lstat(bottom + b"/f").st_size == 4
    finally:
        tree.close()
        fd = os.open(root, os.O_PATH)
        try:
            remove_tree(fd, b"d")  # pytest's own clean-up recurses
        finally:
            os.close(fd)


@pytest.mark.parametrize("make", [lambda: tp.Remove(seq=1, path=b"d"), lambda: tp.Purge(seq=1)])
def test_remove_and_purge_of_a_deep_tree(tree: Tree, root: Path, make: Callable[[], tp.Operation]) -> None:
    deep_chain(root, DEEP)
    (root / "keep").write_bytes(b"")
    tree.apply(make())
    assert not (root / "d").exists()


def test_remove_goes_back_up_only_within_the_subtree(tree: Tree, root: Path, outside: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "file").write_bytes(b"x")
    os.symlink(outside, root / "a" / "b" / "c" / "out")
    (root / "a2").mkdir()
    before = entry_states(outside)
    tree.apply(tp.Remove(seq=1, path=b"a/b"))
    assert sorted(os.listdir(root)) == ["a", "a2"]
    assert os.listdir(root / "a") == []
    assert entry_states(outside) == before
