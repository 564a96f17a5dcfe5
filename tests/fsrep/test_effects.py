"""Effects: the marks each kind of mutation builds, over a real store and a
real inode table, without FUSE."""

from __future__ import annotations

import os

import tracking
from fsrep._inodes import ROOT
from tests.fsrep.conftest import VM, Namespace


def test_a_write_marks_its_regions_under_its_path_and_waits_on_the_directories_above(ns: Namespace) -> None:
    f = ns.make("a/b/f", b"data")
    marks = ns.effects.write(ns.where(f), 4096, 100)
    assert marks.regions == ((ns.st_ino("a/b/f"), b"a/b/f", 4096, 100),)
    assert marks.meta == ()  # the size and times follow from the data
    assert marks.ancestors == (ns.st_ino(""), ns.st_ino("a"), ns.st_ino("a/b"))
    assert marks.parent == ns.st_ino("a/b")


def test_a_file_in_a_declared_group_is_marked_by_its_path_there_below_the_groups_root(ns: Namespace) -> None:
    f = ns.make(f"{VM}/sub/f", b"x")
    where = ns.where(f)
    assert where.group is ns.groups.all[1]
    assert (where.path, where.mount_path) == (b"sub/f", f"{VM}/sub/f".encode())
    marks = ns.effects.write(where, 0, 1)
    assert marks.regions == ((ns.st_ino(f"{VM}/sub/f"), b"sub/f", 0, 1),)
    assert marks.ancestors == (ns.st_ino(VM), ns.st_ino(f"{VM}/sub")), "the mount's root is not the group's"


def test_a_truncate_marks_the_regions_between_the_two_sizes_either_way(ns: Namespace) -> None:
    f = ns.make("d/f", b"0123456789")
    where, ino = ns.where(f), ns.st_ino("d/f")
    growing = ns.effects.resize(where, 10, 5000)
    shrinking = ns.effects.resize(where, 5000, 10)
    assert growing.regions == shrinking.regions == ((ino, b"d/f", 10, 4990),)
    assert growing.meta == shrinking.meta == ((ino, b"d/f"),)
    assert growing.parent == ns.st_ino("d")
    same = ns.effects.resize(where, 10, 10)
    assert (same.regions, same.meta) == ((), ((ino, b"d/f"),))


def test_a_change_of_metadata_marks_the_file_and_no_regions(ns: Namespace) -> None:
    f = ns.make("f", b"abc")
    marks = ns.effects.meta(ns.where(f))
    assert (marks.regions, marks.meta) == ((), ((ns.st_ino("f"), b"f"),))
    assert marks.ancestors == (ns.st_ino(""),)


def test_a_barrier_marks_nothing_but_waits_on_the_directories_above(ns: Namespace) -> None:
    f = ns.make("a/f", b"abc")
    marks = ns.effects.barrier(ns.where(f))
    assert not marks
    assert marks.ancestors == (ns.st_ino(""), ns.st_ino("a"))


def test_a_new_entry_in_a_nested_directory_marks_that_directory_below_its_ancestors(ns: Namespace) -> None:
    c = ns.make("a/b/c")
    marks = ns.effects.in_dirs(c)
    assert marks.dirs == ((ns.st_ino("a/b/c"), b"a/b/c"),)
    assert marks.ancestors == (ns.st_ino(""), ns.st_ino("a"), ns.st_ino("a/b"))
    assert (marks.regions, marks.meta) == ((), ())


def test_a_new_entry_at_a_declared_groups_root_marks_the_root_by_the_empty_path(ns: Namespace) -> None:
    vm = ns.look_up(VM)
    marks = ns.effects.in_dirs(vm)
    assert marks.dirs == ((ns.st_ino(VM), b""),)
    assert marks.ancestors == ()


def test_a_renamed_file_is_marked_whole_at_its_new_path_and_both_directories(ns: Namespace) -> None:
    a, b = ns.make("a"), ns.make("b")
    ns.make("a/f", b"abc")
    marks = ns.effects.rename((a, b), b"a/f", b"b/g")
    ino = ns.st_ino("a/f")
    assert marks.dirs == ((ns.st_ino("a"), b"a"), (ns.st_ino("b"), b"b"))
    assert marks.regions == ((ino, b"b/g", 0, 3),)
    assert marks.meta == ((ino, b"b/g"),)
    assert marks.ancestors == (ns.st_ino(""), ns.st_ino(""))
    assert marks.parent is None


def test_a_renamed_empty_file_marks_its_metadata_only(ns: Namespace) -> None:
    ns.make("e", b"")
    marks = ns.effects.rename((ROOT, ROOT), b"e", b"e2")
    assert (marks.regions, marks.meta) == ((), ((ns.st_ino("e"), b"e2"),))


def test_a_renamed_directory_is_compared_entry_by_entry_at_its_new_path(ns: Namespace) -> None:
    ns.make("d/inner", b"x")
    marks = ns.effects.rename((ROOT, ROOT), b"d", b"moved")
    assert marks.dirs == ((ns.st_ino(""), b""), (ns.st_ino(""), b""), (ns.st_ino("d"), b"moved"))
    assert (marks.regions, marks.meta) == ((), ())


def test_an_exchange_marks_both_entries_at_each_others_paths(ns: Namespace) -> None:
    ns.make("x", b"12345")
    ns.make("y")
    marks = ns.effects.rename((ROOT, ROOT), b"x", b"y", exchange=True)
    assert marks.regions == ((ns.st_ino("x"), b"y", 0, 5),)
    assert (ns.st_ino("y"), b"x") in marks.dirs


def test_a_rename_of_what_is_already_gone_marks_the_directories_only(ns: Namespace) -> None:
    marks = ns.effects.rename((ROOT, ROOT), b"missing", b"other")
    assert marks.dirs == ((ns.st_ino(""), b""), (ns.st_ino(""), b""))
    assert (marks.regions, marks.meta) == ((), ())


def test_a_link_marks_the_new_directory_and_the_files_metadata(ns: Namespace) -> None:
    f = ns.make("a/f", b"abc")
    d = ns.make("d/e")
    marks = ns.effects.link(ns.where(f), d)
    assert marks.dirs == ((ns.st_ino("d/e"), b"d/e"),)
    assert marks.meta == ((ns.st_ino("a/f"), b"a/f"),)
    assert marks.regions == ()
    assert marks.ancestors == (ns.st_ino(""), ns.st_ino("d"), ns.st_ino(""), ns.st_ino("a"))


def test_a_change_to_a_nameless_hard_link_is_marked_under_its_inode_alone(ns: Namespace) -> None:
    f = ns.make("a", b"orig")
    os.link(ns.store / "a", ns.store / "b")  # a name this mount never looked up
    ns.inodes.opened(f)
    ns.inodes.unlinked(ROOT, b"a")
    os.unlink(ns.store / "a")
    assert ns.effects.locate(f) is None
    ino = ns.st_ino("b")
    written = ns.effects.nameless(f, (4, 9))
    assert written.regions == ((ino, tracking.UNNAMED, 4, 9),)
    assert written.meta == ((ino, tracking.UNNAMED),)
    assert written.ancestors == ()
    chmod = ns.effects.nameless(f)
    assert (chmod.regions, chmod.meta) == ((), ((ino, tracking.UNNAMED),))


def test_the_store_root_is_marked_by_its_own_inode_number(ns: Namespace) -> None:
    assert ns.effects.backing(ROOT) == ns.st_ino("")
    assert ns.effects.backing(ns.st_ino("")) == ROOT
    assert ns.where(ROOT).above == ()
