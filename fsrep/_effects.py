"""What a mutation of the mount touches: the ``tracking.Marks`` it would
leave dirty should it not reach the replica, built from the inode table.

How this works: a change to a file marks its data regions (a write, a
truncate) or its metadata, under its backing inode and its path in its
group, with the group's directories above it as ancestors (a change below a
directory still dirty cannot be replicated: the replica may not have the
directory yet). A namespace change marks the directories whose entries it
changes. ``Location`` is one walk up the inode table: where an inode is, in
which group, and what lies above it; callers that change one file several
times (the writes through an open handle) keep it as long as the namespace
stays the same (``InodeTable.epoch``).

No pyfuse3 here, and no system call but the lstat of an entry that moves:
the FUSE handlers ask, and pass the marks to their group's relationship.

Caveats:
- A file none of whose names this mount knows is marked under
  ``tracking.UNNAMED``: a resync finds it by its inode.
- A moved entry is marked whole (all of a file, every entry of a
  directory): the replica may hold another entry of the same kind at the
  target, even of the same size.
"""

from __future__ import annotations

import stat
from typing import NamedTuple

import tracking
from tracking import Marks

from ._groups import Group, Groups
from ._inodes import InodeTable
from ._tree import Tree


class Location(NamedTuple):
    """Where an inode is: its group, its path relative to the group's root
    and to the mount's, and the backing inodes of the group's directories
    above it, the group's root first. (A NamedTuple, not a frozen
    dataclass: one is made on every walk, and costs a third as much.)"""

    ino: int
    group: Group
    path: bytes
    mount_path: bytes
    above: tuple[int, ...]


def combined(*parts: Marks) -> Marks:
    """The marks of one change that touches several entries (a rename, a
    link): everything of every part, and no single parent."""
    return Marks(regions=tuple(r for m in parts for r in m.regions), meta=tuple(x for m in parts for x in m.meta),
                 dirs=tuple(d for m in parts for d in m.dirs), ancestors=tuple(a for m in parts for a in m.ancestors))


class Effects:
    """The marks of each kind of mutation, for the inodes of one mount."""

    def __init__(self, inodes: InodeTable, groups: Groups, tree: Tree) -> None:
        self.inodes = inodes
        self.groups = groups
        self.tree = tree

    def backing(self, ino: int) -> int:
        """The backing st_ino of a FUSE inode."""
        return self.inodes.backing(ino)

    def locate(self, ino: int) -> Location | None:
        """Where *ino* is now (one walk up the inode table); None once it
        has no known name (unlinked, or reached through a name since removed).

        Raises:
            OSError(ESTALE): the inode is not known.
        """
        found = self.inodes.chain(ino)
        if found is None:
            return None
        mount_path, dirs = found
        group, path = self.groups.route(mount_path)
        backing = self.inodes.backing
        return Location(ino, group, path, mount_path, tuple(backing(d) for d in dirs[group.depth:]))

    # --- changes to one file ---------------------------------------------------------

    def write(self, where: Location, offset: int, length: int) -> Marks:
        """Bytes written at *offset*: those regions (the size and times follow from them)."""
        return self._on_file(where, regions=((offset, length),), meta=False)

    def resize(self, where: Location, old_size: int, new_size: int) -> Marks:
        """A truncate, up or down: the metadata, and the regions between the two sizes."""
        low, high = sorted((old_size, new_size))
        return self._on_file(where, regions=((low, high - low),) if high > low else (), meta=True)

    def meta(self, where: Location) -> Marks:
        """A change of metadata only: mode, owner, times, an xattr."""
        return self._on_file(where, regions=(), meta=True)

    def barrier(self, where: Location) -> Marks:
        """An fsync: nothing dirty of its own, but it waits on the directories above."""
        return Marks(ancestors=where.above)

    def _on_file(self, where: Location, *, regions: tuple[tuple[int, int], ...], meta: bool) -> Marks:
        backing = self.backing(where.ino)
        return Marks(regions=tuple((backing, where.path, offset, length) for offset, length in regions),
                     meta=((backing, where.path),) if meta else (), ancestors=where.above,
                     parent=where.above[-1] if where.above else None)

    def nameless(self, ino: int, data: tuple[int, int] | None = None) -> Marks:
        """A change to a file none of whose names this mount knows: its
        metadata, and the (offset, length) of *data* written, under its
        inode alone."""
        backing = self.backing(ino)
        return Marks(regions=((backing, tracking.UNNAMED, *data),) if data is not None else (),
                     meta=((backing, tracking.UNNAMED),))

    # --- namespace changes -----------------------------------------------------------

    def in_dirs(self, *parents: int) -> Marks:
        """Entries made or removed in directories *parents* (mkdir,
        create, symlink, mknod, unlink, rmdir)."""
        dirs: list[tuple[int, bytes]] = []
        ancestors: list[int] = []
        for parent in parents:
            where = self.locate(parent)
            dirs.append((self.backing(parent), where.path if where is not None else b""))
            ancestors.extend(where.above if where is not None else ())
        return Marks(dirs=tuple(dirs), ancestors=tuple(ancestors))

    def link(self, target: Location, new_parent: int) -> Marks:
        """A new name for *target* in *new_parent*: its directory, and the
        file's metadata (its link count)."""
        return combined(self.in_dirs(new_parent), self.meta(target))

    def rename(self, parents: tuple[int, int], old: bytes, new: bytes, *, exchange: bool = False) -> Marks:
        """Mount path *old* renamed to *new* (both in one group) in
        directories *parents* (old, new); with *exchange* the two entries
        swap. Call it before the rename is applied: it looks at what moves."""
        moved = [self._moved(old, self.groups.route(new)[1])]
        if exchange:
            moved.append(self._moved(new, self.groups.route(old)[1]))
        return combined(self.in_dirs(*parents), *moved)

    def _moved(self, old: bytes, new: bytes) -> Marks:
        """The entry at mount path *old*, to arrive at *new* (a path in its
        group): a file is marked whole, a directory entry by entry."""
        try:
            st = self.tree.lstat(old)
        except OSError:
            return Marks()
        if stat.S_ISDIR(st.st_mode):
            return Marks(dirs=((st.st_ino, new),))
        if stat.S_ISREG(st.st_mode) and st.st_size:
            return Marks(regions=((st.st_ino, new, 0, st.st_size),), meta=((st.st_ino, new),))
        return Marks(meta=((st.st_ino, new),))
