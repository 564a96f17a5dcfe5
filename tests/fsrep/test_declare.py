"""Declaring and retiring consistency groups, on a real store directory:
the group root made (never through a symlink), hard links that would span
two groups refused, and what a subtree leaving or joining a group marks
dirty in the relationship that holds it (and saves)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsrep import _declare as declare
from fsrep._config import ConfigError, GroupRecord, GroupStore
from fsrep._groups import Group, Groups
from fsrep._splitter import Relationship
from fsrep._tree import Tree
from tracking import RegionRange

KEY = b"k" * 32


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A primary store: the test's own directory."""
    return tmp_path


@pytest.fixture
def tree(store: Path) -> Iterator[Tree]:
    tree = Tree(store)
    yield tree
    tree.close()


def _group(store: Path, tree: Tree, path: str = "") -> Group:
    """A group of *store*, with a relationship that never connects."""
    record = GroupRecord(id=str(uuid.uuid4()), path=path, policy="sync", secondary="127.0.0.1:9")
    return Group(Relationship(record, GroupStore(str(store)), KEY), tree, path.encode())


def _ino(path: Path) -> int:
    return os.lstat(path).st_ino


def test_make_root_makes_what_is_missing_and_says_what(store: Path, tree: Tree) -> None:
    (store / "vms").mkdir()
    assert declare.make_root(tree, "vms/vm1/disk") == [b"vms/vm1", b"vms/vm1/disk"]
    assert (store / "vms" / "vm1" / "disk").is_dir()
    assert declare.make_root(tree, "vms/vm1/disk") == []


@pytest.mark.parametrize("in_the_way", ["file", "symlink"])
def test_make_root_refuses_a_file_or_a_symlink_in_the_way(store: Path, tree: Tree, in_the_way: str) -> None:
    elsewhere = store / "elsewhere"
    elsewhere.mkdir()
    if in_the_way == "file":
        (store / "vms").write_text("not a directory")
    else:
        (store / "vms").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=r"^group 'vms/vm1': cannot use vms in the store as a group directory "
                                          r"\(.*\); group paths must be plain directories of the store$"):
        declare.make_root(tree, "vms/vm1")
    assert list(elsewhere.iterdir()) == []  # nothing was made through the symlink


def test_make_root_refuses_a_root_that_holds_fsrep(store: Path, tree: Tree) -> None:
    (store / "vm" / ".fsrep").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"vm/\.fsrep is reserved .* rename it before declaring the group"):
        declare.make_root(tree, "vm")


def test_check_links_refuses_a_hard_link_to_a_file_outside_the_group(store: Path) -> None:
    (store / "vm").mkdir()
    (store / "outside").write_text("one file, two groups")
    os.link(store / "outside", store / "vm" / "inside")
    group_tree = Tree(store / "vm")
    try:
        with pytest.raises(ConfigError, match=r"^group 'vm': vm/inside has a hard link outside the group"):
            declare.check_links(group_tree, "vm")
    finally:
        group_tree.close()


def test_check_links_accepts_hard_links_that_stay_in_the_group(store: Path) -> None:
    (store / "vm" / "sub").mkdir(parents=True)
    (store / "vm" / "a").write_text("both names in the group")
    os.link(store / "vm" / "a", store / "vm" / "sub" / "b")
    group_tree = Tree(store / "vm")
    try:
        declare.check_links(group_tree, "vm")
    finally:
        group_tree.close()


async def test_a_subtree_that_left_marks_the_directories_above_it(store: Path, tree: Tree) -> None:
    (store / "a" / "b" / "vm").mkdir(parents=True)
    owner = _group(store, tree)
    declare.left(owner, "a/b/vm")
    dirty = owner.rel.dirty
    assert sorted(dirty.dirs()) == sorted(_ino(p) for p in (store, store / "a", store / "a" / "b"))
    assert not dirty.dir_dirty(_ino(store / "a" / "b" / "vm"))  # it is no longer this group's
    assert dirty.files() == []
    assert owner.rel.record.stale
    assert owner.rel.record.stale_reason == "group /a/b/vm was declared; its subtree left this group"
    saved = GroupStore(str(store)).load_dirty(owner.rel.record)
    assert sorted(saved.dirs()) == sorted(dirty.dirs())


async def test_a_subtree_that_joined_is_copied_whole(store: Path, tree: Tree) -> None:
    vm = store / "a" / "vm"
    (vm / "sub").mkdir(parents=True)
    (vm / "sub" / "data").write_bytes(b"x" * 10_000)
    (vm / "empty").write_bytes(b"")
    (vm / "link").symlink_to("sub/data")
    owner = _group(store, tree)
    declare.joined(owner, "a/vm")
    dirty = owner.rel.dirty
    assert sorted(dirty.dirs()) == sorted(_ino(p) for p in (store, store / "a", vm, vm / "sub"))
    assert sorted(dirty.files()) == sorted(_ino(p) for p in (vm / "sub" / "data", vm / "empty", vm / "link"))
    for name in ("sub/data", "empty", "link"):
        assert dirty.meta_dirty(_ino(vm / name)), name
    assert dirty.count_in(_ino(vm / "sub" / "data"), RegionRange(0, 100)) == 3  # 10,000 bytes: three regions
    assert not dirty.overlaps(_ino(vm / "empty"), RegionRange(0, 1))
    assert owner.rel.record.stale_reason == "group /a/vm was retired; its subtree joined this group"


async def test_a_subtree_that_joined_but_is_gone_marks_only_the_directories_above(store: Path, tree: Tree) -> None:
    (store / "a").mkdir()
    owner = _group(store, tree)
    declare.joined(owner, "a/vm")
    assert sorted(owner.rel.dirty.dirs()) == sorted(_ino(p) for p in (store, store / "a"))
    assert owner.rel.dirty.files() == []


@pytest.mark.parametrize("move", [declare.left, declare.joined], ids=["left", "joined"])
async def test_a_group_already_compared_whole_is_left_as_it_is(store: Path, tree: Tree, move) -> None:
    (store / "vm" / "f").mkdir(parents=True)
    owner = _group(store, tree)
    owner.rel.dirty.mark_everything("a baseline")
    move(owner, "vm")
    assert owner.rel.dirty.dirs() == []
    assert owner.rel.dirty.files() == []
    assert not owner.rel.record.stale  # nothing new to say about the replica


def _retirement(store: Path, tree: Tree) -> tuple[GroupStore, dict[str, GroupRecord], Groups]:
    """A store that knows group /vm, and a mount that declares only the default group."""
    groups = GroupStore(str(store))
    (store / "vm").mkdir()
    (store / "vm" / "f").write_bytes(b"kept")
    retired = GroupRecord(id=str(uuid.uuid4()), path="vm", policy="sync", secondary="127.0.0.1:9")
    groups.save(retired)
    return groups, {"vm": retired}, Groups([_group(store, tree)])


async def test_retire_moves_the_named_group_into_the_one_that_holds_it(
        store: Path, tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    groups, records, mount = _retirement(store, tree)
    with caplog.at_level(logging.WARNING, logger="fsrep._declare"):
        declare.retire(groups, records, mount, ("vm",))
    assert [record.path for record in groups.load_all()] == [""]  # /vm is forgotten; / saved its stale mark
    assert mount.default.rel.dirty.count_in(_ino(store / "vm" / "f"), RegionRange(0, 100)) == 1
    [line] = caplog.messages
    assert f"group {records['vm'].id} (/vm) retired: its subtree joins group {mount.default.rel.record.id} (/)" \
        in line


async def test_retire_refuses_a_group_neither_declared_nor_retired(store: Path, tree: Tree) -> None:
    groups, records, mount = _retirement(store, tree)
    with pytest.raises(ConfigError, match=r"\(/vm\) is known to this store but not declared; .* --retire vm"):
        declare.retire(groups, records, mount, ())
    assert groups.load_all() == [records["vm"]]
    assert not mount.default.rel.dirty


async def test_retire_refuses_an_unknown_group_and_names_the_known(store: Path, tree: Tree) -> None:
    groups, records, mount = _retirement(store, tree)
    with pytest.raises(ConfigError, match=r"^--retire nope: this store has no group at /nope to retire "
                                          r"\(known: /vm\)$"):
        declare.retire(groups, records, mount, ("nope",))
    assert groups.load_all() == [records["vm"]]
