"""Handles: open files, the location each caches (never stale: every
namespace change that can move a path moves the inode table's epoch), and
the descriptors kept of files with no known name — without FUSE, then on a
real mount, where a file renamed under an open handle is still written
where it now is on both sides."""

from __future__ import annotations

import errno
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsrep._handles import Handle, Handles
from fsrep._inodes import ROOT
from tests.conftest import Cluster
from tests.fsrep.conftest import Namespace

STEPS = 400


@pytest.fixture
def handles(ns: Namespace) -> Iterator[Handles]:
    table = Handles(ns.inodes, ns.effects)
    try:
        yield table
    finally:
        for fd in list(table.files):
            table.release(fd)


def _open(ns: Namespace, handles: Handles, path: str) -> Handle:
    ino = ns.look_up(path)
    return handles.opened(os.open(ns.store / path, os.O_RDWR), ino)


def _path(handles: Handles, handle: Handle) -> bytes | None:
    where = handles.locate(handle)
    return where.mount_path if where is not None else None


# --- the cached location -------------------------------------------------------------


def test_a_handle_keeps_its_location_while_the_namespace_stays(ns: Namespace, handles: Handles) -> None:
    ns.make("a/b/f", b"x")
    handle = _open(ns, handles, "a/b/f")
    first = handles.locate(handle)
    assert first is not None
    assert first.mount_path == b"a/b/f"
    ns.look_up("a/b/f")  # a lookup of a name already known moves nothing
    assert handles.locate(handle) is first


def test_a_rename_of_any_directory_above_moves_the_location(ns: Namespace, handles: Handles) -> None:
    ns.make("a/b/f", b"x")
    handle = _open(ns, handles, "a/b/f")
    assert _path(handles, handle) == b"a/b/f"
    ns.inodes.renamed(ROOT, b"a", ROOT, b"z")
    assert _path(handles, handle) == b"z/b/f"
    ns.inodes.renamed(ns.inodes.lookup_entry(ROOT, b"z"), b"b", ROOT, b"y")
    assert _path(handles, handle) == b"y/f"
    ns.inodes.renamed(ns.inodes.lookup_entry(ROOT, b"y"), b"f", ROOT, b"g")
    assert _path(handles, handle) == b"g"


def test_a_move_into_a_declared_group_changes_the_group_too(ns: Namespace, handles: Handles) -> None:
    vm = ns.look_up("vm")
    ns.make("f", b"x")
    handle = _open(ns, handles, "f")
    assert handles.locate(handle).group is ns.groups.default
    ns.inodes.renamed(ROOT, b"f", vm, b"f")
    where = handles.locate(handle)
    assert (where.group, where.path, where.above) == (ns.groups.all[1], b"f", (ns.st_ino("vm"),))


def test_an_unlink_of_the_name_leaves_no_location_and_a_new_name_gives_one(ns: Namespace, handles: Handles) -> None:
    ns.make("f", b"x")
    handle = _open(ns, handles, "f")
    assert _path(handles, handle) == b"f"
    ns.inodes.unlinked(ROOT, b"f")
    assert _path(handles, handle) is None
    ns.inodes.remember(ns.st_ino("f"), ROOT, b"again")  # another hard link looked up
    assert _path(handles, handle) == b"again"


def test_a_link_that_sorts_first_becomes_the_path(ns: Namespace, handles: Handles) -> None:
    ns.make("d/f", b"x")
    handle = _open(ns, handles, "d/f")
    assert _path(handles, handle) == b"d/f"
    ns.inodes.remember(ns.st_ino("d/f"), ROOT, b"a")  # (root, "a") comes before (d, "f")
    assert _path(handles, handle) == b"a"


def test_a_directory_above_dropped_by_forget_moves_the_epoch(ns: Namespace, handles: Handles) -> None:
    d = ns.make("d")
    before = ns.inodes.epoch
    ns.inodes.forget(d, 1)
    assert d not in ns.inodes
    assert ns.inodes.epoch != before


def test_the_cache_always_equals_a_fresh_walk(ns: Namespace, handles: Handles) -> None:
    """Random renames, exchanges, unlinks, links and forgets over a small
    tree: after each, every handle's location is what a new walk finds."""
    rng = random.Random(14)
    for path in ("a/b/f1", "a/f2", "c/f3", "vm/d/f4"):
        ns.make(path, b"x")
    open_handles = [_open(ns, handles, path) for path in ("a/b/f1", "a/f2", "c/f3", "vm/d/f4")]
    dirs = [ROOT, *(ns.look_up(p) for p in ("a", "a/b", "c", "vm", "vm/d"))]
    names = [b"a", b"b", b"c", b"x", b"f1", b"f2"]
    moved = 0
    for _ in range(STEPS):
        known = [(p, n) for p in dirs for n in names if ns.inodes.lookup_entry(p, n) is not None]
        kind = rng.choice(("rename", "exchange", "unlink", "link", "forget"))
        if known and kind in ("rename", "exchange", "unlink"):
            parent, name = rng.choice(known)
            other = (rng.choice(dirs), rng.choice(names))
            if kind == "rename":
                ns.inodes.renamed(parent, name, *other)
            elif kind == "exchange":
                ns.inodes.exchanged(parent, name, *other)
            else:
                ns.inodes.unlinked(parent, name)
        elif kind == "link":
            target = rng.choice(open_handles)
            ns.inodes.remember(ns.effects.backing(target.ino), rng.choice(dirs), rng.choice(names))
        elif kind == "forget":
            victim = rng.choice(dirs[1:])
            if victim in ns.inodes:
                ns.inodes.forget(victim, 1)
        for handle in open_handles:
            cached = handles.locate(handle)
            assert cached == ns.effects.locate(handle.ino)
            moved += cached is None or cached.mount_path != b""
    assert moved, "no step ever gave a handle a location"


# --- files with no known name --------------------------------------------------------


def test_an_unlinked_open_file_keeps_a_descriptor_until_its_last_handle_closes(ns: Namespace,
                                                                                handles: Handles) -> None:
    ns.make("f", b"x")
    first, second = _open(ns, handles, "f"), _open(ns, handles, "f")
    with pytest.raises(OSError) as raised:
        handles.unlinked_fd(first.ino)
    assert raised.value.errno == errno.ENOENT
    os.unlink(ns.store / "f")
    ns.inodes.unlinked(ROOT, b"f")
    handles.name_removed(first.ino, ns.groups.default)
    kept = handles.unlinked_fd(first.ino)
    assert kept in (first.fd, second.fd)
    assert handles.nameless(first.ino) is None, "no name is left anywhere: nobody else's change"
    handles.release(kept)
    still = handles.unlinked_fd(first.ino)
    assert still != kept
    assert still in (first.fd, second.fd)
    handles.release(still)
    with pytest.raises(OSError):
        handles.unlinked_fd(first.ino)
    assert first.ino not in ns.inodes or ns.inodes.node(first.ino).opens == 0


def test_a_removed_name_with_another_hard_link_on_disk_is_nameless_in_its_group(ns: Namespace,
                                                                                 handles: Handles) -> None:
    ns.make("vm/a", b"x")
    os.link(ns.store / "vm/a", ns.store / "vm/b")  # never looked up
    handle = _open(ns, handles, "vm/a")
    vm = ns.look_up("vm")
    os.unlink(ns.store / "vm/a")
    ns.inodes.unlinked(vm, b"a")
    handles.name_removed(handle.ino, ns.groups.all[1])
    assert handles.nameless(handle.ino) is ns.groups.all[1]


def test_a_removed_name_that_was_not_the_last_keeps_no_descriptor(ns: Namespace, handles: Handles) -> None:
    ns.make("a", b"x")
    os.link(ns.store / "a", ns.store / "b")
    handle = _open(ns, handles, "a")
    ns.look_up("b")
    ns.inodes.unlinked(ROOT, b"a")
    handles.name_removed(handle.ino, ns.groups.default)
    with pytest.raises(OSError):
        handles.unlinked_fd(handle.ino)


# --- on a real mount -----------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writes_through_a_handle_follow_renames_of_the_file_and_of_every_directory_above(mounted: Cluster) -> None:
    m = mounted.mnt
    (m / "a" / "b").mkdir(parents=True)
    (m / "other").mkdir()
    big = os.urandom(300 * 1024)  # more than one frame: the pieces path
    with open(m / "a" / "b" / "f", "wb") as f:
        f.write(b"1" * 4096)
        f.flush()
        os.rename(m / "a", m / "z")  # the grandparent
        f.write(b"2" * 4096)
        f.flush()
        os.rename(m / "z" / "b", m / "other" / "b")  # the parent, to another directory
        f.write(big)
        f.flush()
        os.rename(m / "other" / "b" / "f", m / "g")  # the file itself
        os.link(m / "g", m / "Alias")  # a name that sorts first
        f.write(b"3" * 10)
        f.flush()
        os.unlink(m / "g")
        f.write(b"4" * 10)
        os.fsync(f.fileno())
    expected = b"1" * 4096 + b"2" * 4096 + big + b"3" * 10 + b"4" * 10
    assert (m / "Alias").read_bytes() == expected
    mounted.assert_replicated()
    replica = mounted.secondary.replica_root()
    assert _digest(replica / "Alias") == hashlib.sha256(expected).hexdigest()
    assert not (replica / "g").exists()
    assert not (replica / "z" / "b").exists()
