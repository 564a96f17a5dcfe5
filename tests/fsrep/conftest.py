"""Fixtures for the FUSE layer's parts tested without FUSE: a store with a
default and a declared group, and the inode table a mount over it keeps."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fsrep._config import GroupRecord, GroupStore
from fsrep._effects import Effects, Location
from fsrep._groups import Group, Groups
from fsrep._inodes import ROOT, InodeTable
from fsrep._splitter import Relationship
from fsrep._tree import Tree

KEY = b"k" * 32
VM = "vm"  # the declared group's root


@dataclass
class Namespace:
    """A store with a default group and a declared one (``vm``), the
    inode table of a mount over it, and its Effects."""

    store: Path
    tree: Tree
    groups: Groups
    inodes: InodeTable
    effects: Effects

    def make(self, path: str, data: bytes | None = None) -> int:
        """Make *path* in the store (a directory unless *data* is given) and
        remember each component as the kernel's lookups would; its inode."""
        target = self.store / path
        if data is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return self.look_up(path)

    def look_up(self, path: str) -> int:
        parent = ROOT
        walked = self.store
        for name in path.split("/"):
            walked = walked / name
            parent = self.inodes.remember(os.lstat(walked).st_ino, parent, name.encode())
        return parent

    def st_ino(self, path: str) -> int:
        return os.lstat(self.store / path).st_ino

    def where(self, ino: int) -> Location:
        where = self.effects.locate(ino)
        assert where is not None, f"inode {ino} has no known name"
        return where


def _group(store: Path, tree: Tree, path: str) -> Group:
    record = GroupRecord(id=str(uuid.uuid4()), path=path, policy="sync", secondary="127.0.0.1:9")
    return Group(Relationship(record, GroupStore(str(store)), KEY), tree, path.encode())


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[Namespace]:
    store = tmp_path / "store"
    (store / VM).mkdir(parents=True)
    tree = Tree(store)
    default, declared = tree.subtree(hidden=[VM.encode()]), tree.subtree(VM.encode())
    groups = Groups([_group(store, default, ""), _group(store, declared, VM)])
    inodes = InodeTable(os.stat(store).st_ino)
    try:
        yield Namespace(store, tree, groups, inodes, Effects(inodes, groups, tree))
    finally:
        for t in (declared, default, tree):
            t.close()
