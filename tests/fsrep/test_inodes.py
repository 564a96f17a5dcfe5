"""InodeTable bookkeeping, without FUSE."""

from __future__ import annotations

import errno

import pytest

from fsrep._inodes import FOREIGN, ROOT, InodeTable

ROOT_ST_INO = 500


def test_root_is_one_and_backing_inode_one_takes_the_roots_number() -> None:
    table = InodeTable(ROOT_ST_INO)
    assert table.fuse_ino(ROOT_ST_INO) == ROOT
    assert table.fuse_ino(1) == ROOT_ST_INO
    assert table.fuse_ino(77) == 77
    assert table.path(ROOT) == b""


def test_paths_follow_renamed_parents() -> None:
    table = InodeTable(ROOT_ST_INO)
    d = table.remember(10, ROOT, b"dir")
    f = table.remember(11, d, b"file")
    assert table.path(f) == b"dir/file"
    table.renamed(ROOT, b"dir", ROOT, b"moved")
    assert table.path(f) == b"moved/file"
    assert table.lookup_entry(ROOT, b"dir") is None


def test_hard_links_resolve_while_any_link_remains() -> None:
    table = InodeTable(ROOT_ST_INO)
    a = table.remember(20, ROOT, b"a")
    assert table.remember(20, ROOT, b"b") == a
    table.unlinked(ROOT, b"a")
    assert table.path(a) == b"b"
    table.unlinked(ROOT, b"b")
    assert table.path(a) is None


def test_rename_over_an_entry_unlinks_the_old_target() -> None:
    table = InodeTable(ROOT_ST_INO)
    new = table.remember(30, ROOT, b"new")
    old = table.remember(31, ROOT, b"old")
    table.renamed(ROOT, b"new", ROOT, b"old")
    assert table.path(new) == b"old"
    assert table.path(old) is None


def test_exchange_swaps_paths() -> None:
    table = InodeTable(ROOT_ST_INO)
    a = table.remember(40, ROOT, b"a")
    d = table.remember(41, ROOT, b"d")
    b = table.remember(42, d, b"b")
    table.exchanged(ROOT, b"a", d, b"b")
    assert (table.path(a), table.path(b)) == (b"d/b", b"a")


def test_node_lives_until_lookups_and_opens_are_both_zero() -> None:
    table = InodeTable(ROOT_ST_INO)
    f = table.remember(50, ROOT, b"f")
    table.remember(50, ROOT, b"f")
    table.opened(f)
    table.forget(f, 2)
    assert f in table
    table.unlinked(ROOT, b"f")
    assert table.path(f) is None
    table.closed(f)
    assert f not in table
    with pytest.raises(OSError) as info:
        table.path(f)
    assert info.value.errno == errno.ESTALE


def test_forget_of_the_root_or_an_unknown_inode_is_harmless() -> None:
    table = InodeTable(ROOT_ST_INO)
    table.forget(ROOT, 100)
    table.forget(12345, 1)
    assert table.path(ROOT) == b""
    assert len(table) == 1


def test_a_new_inode_at_a_known_name_replaces_the_old_entry() -> None:
    table = InodeTable(ROOT_ST_INO)
    old = table.remember(60, ROOT, b"x")
    new = table.remember(61, ROOT, b"x")
    assert table.lookup_entry(ROOT, b"x") == new
    assert table.path(old) is None


def test_chain_lists_the_directories_from_the_root_and_survives_deep_trees() -> None:
    table = InodeTable(ROOT_ST_INO)
    parent = ROOT
    for depth in range(3000):
        parent = table.remember(1000 + depth, parent, b"d")
    leaf = table.remember(99999, parent, b"leaf")
    path, dirs = table.chain(leaf)
    assert path == b"d/" * 3000 + b"leaf"
    assert dirs[0] == ROOT
    assert dirs[-1] == parent
    assert len(dirs) == 3001


STORE, OTHER = 7, 9  # devices


def test_inodes_of_another_device_get_numbers_of_their_own() -> None:
    table = InodeTable(ROOT_ST_INO, STORE)
    here = table.remember(77, ROOT, b"here", STORE)
    there = table.remember(77, ROOT, b"there", OTHER)
    assert here == 77
    assert there >= FOREIGN
    assert table.fuse_ino(77, OTHER) == there
    assert table.backing(there) == 77
    assert table.backing(here) == 77
    assert table.known(77, OTHER) == there
    assert table.known(78, OTHER) is None


def test_a_foreign_number_goes_with_the_kernels_last_reference() -> None:
    table = InodeTable(ROOT_ST_INO, STORE)
    there = table.remember(77, ROOT, b"there", OTHER)
    table.forget(there, 1)
    assert table.known(77, OTHER) is None
    assert table.fuse_ino(77, OTHER) != there  # a new number: the kernel forgot the old one


def test_a_rehomed_inode_keeps_its_number_and_the_store_reuses_none() -> None:
    table = InodeTable(ROOT_ST_INO, STORE)
    moved = table.remember(88, ROOT, b"moved", STORE)
    table.rehome(moved, OTHER, 5)
    assert table.fuse_ino(5, OTHER) == moved
    assert table.backing(moved) == 5
    reused = table.remember(88, ROOT, b"new", STORE)  # the store gave the old st_ino to a new file
    assert reused != moved
    assert table.backing(reused) == 88
    assert table.path(moved) == b"moved"
    assert table.path(reused) == b"new"
    table.forget(moved, 1)
    assert table.known(5, OTHER) is None


def test_numbers_given_to_entries_never_looked_up_are_bounded() -> None:
    table = InodeTable(ROOT_ST_INO, STORE)
    for st_ino in range(10_000):
        table.fuse_ino(st_ino, OTHER)  # a listing's attributes, never remembered
    assert len(table._numbers) <= 2 * len(table) + 1025


def test_while_a_move_translates_a_device_its_old_inodes_are_answered_for_their_copies() -> None:
    table = InodeTable(ROOT_ST_INO, OTHER)
    moved = table.remember(88, ROOT, b"moved", OTHER)
    table.rehome(moved, STORE, 5)  # back onto the store's device, as inode 5
    table.moving(OTHER, STORE, {88: 5})
    assert table.fuse_ino(88, OTHER) == moved  # a request under way at the cutover
    assert table.known(88, OTHER) == moved
    table.moved(OTHER)
    assert table.known(88, OTHER) is None
