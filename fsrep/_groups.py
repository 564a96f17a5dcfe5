"""Which consistency group a path of the mount belongs to.

A mount is the default group (``path ""``) minus the subtrees the operator
declared as groups of their own. Every mutation belongs to exactly one group:
its frame carries the path relative to that group's root, goes into that
group's sequence, and its dirty marks into that group's tracking. An
operation that would span two groups (rename or link across them) fails with
EXDEV, as across filesystems; a group's root, and the directories above it,
cannot be removed or renamed (EBUSY) — they hold the group in place.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from ._inodes import InodeTable
from ._splitter import Relationship
from ._tree import Tree


class OtherGroup(OSError):
    """A change naming two paths in different groups (EXDEV to a client,
    as a rename across file systems): their replicas may be on different
    hosts, so nothing can be one operation on both."""

    def __init__(self, source: str, destination: str) -> None:
        super().__init__(errno.EXDEV, f"the paths are in different consistency groups ({source}, {destination})")
        self.source = source
        self.destination = destination


@dataclass(slots=True)
class Group:
    """One consistency group of a mount: its relationship, and its subtree
    of the store (*prefix*, relative to the mount root)."""

    rel: Relationship
    tree: Tree
    prefix: bytes

    @property
    def depth(self) -> int:
        """How many directories the group's root lies below the mount's."""
        return self.prefix.count(b"/") + 1 if self.prefix else 0

    def owns(self, path: bytes) -> bool:
        """Whether mount path *path* is in this group's subtree (for the
        default group: not hidden, that is not in a declared group)."""
        if not self.prefix:
            return not self.tree.is_hidden(path)
        return path == self.prefix or path.startswith(self.prefix + b"/")

    def relative(self, path: bytes) -> bytes:
        """Mount path *path* (in this group) relative to the group's root."""
        if not self.prefix:
            return path
        return b"" if path == self.prefix else path[len(self.prefix) + 1:]

    def locator(self, inodes: InodeTable) -> _Locator:
        return _Locator(self, inodes)


@dataclass(slots=True)
class _Locator:
    """Where the mount last saw a backing inode, relative to a group: a
    resync's first guess for a file that was renamed."""

    group: Group
    inodes: InodeTable

    def __call__(self, backing_ino: int) -> bytes | None:
        fuse = self.inodes.known(backing_ino, os.fstat(self.group.tree.root_fd).st_dev)
        if fuse is None:
            return None
        path = self.inodes.path(fuse)
        if path is None or not self.group.owns(path):
            return None
        return self.group.relative(path)


class Groups:
    """The groups of one mount, the default group first."""

    def __init__(self, groups: list[Group]) -> None:
        self.all = groups
        self.default = groups[0]
        self._declared = groups[1:]
        self.roots = frozenset(group.prefix for group in self._declared)  # mount paths of the declared roots

    def add(self, group: Group) -> None:
        """Serve *group*, a new root the mount has no entry at, from now
        on (a group moved here from another primary, ``_arrivals``): the
        default group no longer reaches its subtree. One step."""
        self.all.append(group)
        self._declared.append(group)
        self.roots = self.roots | {group.prefix}
        default = self.default.tree
        default.hidden = default.hidden | {group.prefix}
        default.forget_all()

    def route(self, path: bytes) -> tuple[Group, bytes]:
        """The group that owns mount path *path*, and the path within it."""
        for group in self._declared:
            if group.owns(path):
                return group, group.relative(path)
        return self.default, path

    def pinned(self, path: bytes) -> bool:
        """Whether *path* is a declared group's root or a directory above one."""
        return any(group.prefix == path or group.prefix.startswith(path + b"/") or not path
                   for group in self._declared)

    def claim(self, path: bytes, code: int) -> tuple[Group, bytes]:
        """Route a namespace change of the entry at *path*; a group root or
        a directory above one fails with *code* (EEXIST to create it,
        EBUSY to remove or rename it)."""
        if self.pinned(path):
            raise OSError(code, "a consistency group's root, or a directory above one")
        return self.route(path)

    def same(self, a: bytes, b: bytes) -> tuple[Group, bytes, bytes]:
        """Route a change naming two paths (rename, link): both must be in
        one group, as both ends of a rename must be on one filesystem."""
        group, rel_a = self.claim(a, errno.EBUSY)
        other, rel_b = self.claim(b, errno.EBUSY)
        if other is not group:
            raise OtherGroup(group.rel.record.id, other.rel.record.id)
        return group, rel_a, rel_b

    def find(self, name: str | None) -> Group | None:
        """The group called *name* (its id or its path, with or without a
        leading ``/``); with no name, the only group. None if no such group."""
        if name is None:
            return self.default if len(self.all) == 1 else None
        path = name.strip("/").encode()
        for group in self.all:
            if name == group.rel.record.id or path == group.prefix:
                return group
        return None
