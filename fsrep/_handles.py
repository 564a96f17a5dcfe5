"""The open files and directories of one mount, and the descriptors that
keep a file reachable after its last known name was removed.

How this works: a file handle is the store's descriptor itself (the FUSE
``fh``), with the inode it was opened on. It caches where that inode is
(``Location``: group, path, the directories above) with the inode table's
epoch of the moment, so the writes through one handle walk the inode chain
once, not once each; any change that can move a path moves the epoch, and
the next use walks again. When an open file loses its last known name, one
of its descriptors is kept by inode (``unlinked_fd``) to serve getattr,
xattrs and truncates, together with the group it was removed from.

Caveats:
- A file unlinked while open and still linked elsewhere under a name this
  mount never looked up is ``nameless``: its changes belong to the group it
  was removed from, and are found by inode.
- Handles hold no reference the kernel does not: ``release`` drops the
  handle and tells the inode table, which may then forget the inode.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from ._dirstream import DirStream
from ._effects import Effects, Location
from ._groups import Group
from ._inodes import InodeTable

NEVER = -1  # the epoch of a location not yet worked out


def removed() -> OSError:
    """The error for a file whose every name is gone."""
    return OSError(errno.ENOENT, "the file was removed")


@dataclass(slots=True)
class Handle:
    """An open file. *where* is its location as of inode-table *epoch*."""

    fd: int
    ino: int
    unsynced: int = 0  # bytes written through this handle since its last fsync
    where: Location | None = None
    epoch: int = NEVER


@dataclass(slots=True)
class DirHandle:
    """An open directory: a cursor into the store's, never a copy of its
    listing (a handle costs one descriptor and one small batch)."""

    ino: int
    stream: DirStream


class Handles:
    """File and directory handles by descriptor, and the descriptors of
    open files with no known name, by inode."""

    def __init__(self, inodes: InodeTable, effects: Effects) -> None:
        self._inodes = inodes
        self._effects = effects
        self.files: dict[int, Handle] = {}
        self.dirs: dict[int, DirHandle] = {}  # by the descriptor of the store's directory
        self._unlinked_fds: dict[int, int] = {}
        self._orphans: dict[int, Group] = {}  # the group each of those was removed from
        # Set while a group's data moves to another file system: given each descriptor opened (fd, inode,
        # whether a directory), it puts one of the copy in its place when it is one of the old data.
        self.moving: Callable[[int, int, bool], None] | None = None

    # --- files ---------------------------------------------------------------------

    def opened(self, fd: int, ino: int) -> Handle:
        """Take *fd*, just opened on *ino*, as a handle."""
        handle = self.files[fd] = Handle(fd, ino)
        self._inodes.opened(ino)
        if self.moving is not None:
            self.moving(handle.fd, handle.ino, False)
        return handle

    def locate(self, handle: Handle) -> Location | None:
        """Where *handle*'s file is now (None: no known name): the cached
        location while the namespace has not changed since, else a new walk."""
        epoch = self._inodes.epoch
        if handle.epoch != epoch:
            handle.where = self._effects.locate(handle.ino)
            handle.epoch = epoch
        return handle.where

    def release(self, fd: int) -> None:
        """Close handle *fd*; a file with no known name keeps another open
        descriptor of its own, if there is one."""
        handle = self.files.pop(fd, None)
        if handle is None:
            return
        if self._unlinked_fds.get(handle.ino) == fd:
            other = self._fd_of(handle.ino)
            if other is None:
                del self._unlinked_fds[handle.ino]
                self._orphans.pop(handle.ino, None)
            else:
                self._unlinked_fds[handle.ino] = other
        os.close(fd)
        self._inodes.closed(handle.ino)

    def _fd_of(self, ino: int) -> int | None:
        for handle in self.files.values():
            if handle.ino == ino:
                return handle.fd
        return None

    # --- files with no known name -------------------------------------------------

    def name_removed(self, ino: int | None, group: Group) -> None:
        """A name of *ino* was removed from *group* (unlink, a rename over
        it): when it was the last one known and the file is open, keep one
        of its descriptors to serve it."""
        if ino is None or ino not in self._inodes or self._inodes.path(ino) is not None:
            return
        fd = self._fd_of(ino)
        if fd is not None:
            self._unlinked_fds.setdefault(ino, fd)
            self._orphans.setdefault(ino, group)

    def unlinked_fd(self, ino: int) -> int:
        """A descriptor of *ino* after its last known name was removed.

        Raises:
            OSError(ENOENT): no handle keeps the file open.
        """
        fd = self._unlinked_fds.get(ino)
        if fd is None:
            raise removed()
        return fd

    def nameless(self, ino: int) -> Group | None:
        """The group of an open file none of whose names this mount knows
        but which still has one (a hard link the kernel never looked up:
        ``a`` opened and unlinked, ``b`` still there); None when the file has
        no name left at all, and its changes are nobody else's."""
        group = self._orphans.get(ino)
        if group is None or os.fstat(self._unlinked_fds[ino]).st_nlink == 0:
            return None
        return group

    # --- directories -------------------------------------------------------------

    def opened_dir(self, fd: int, ino: int) -> None:
        """Take *fd*, a directory just opened on *ino*, as a handle."""
        self.dirs[fd] = DirHandle(ino, DirStream(fd))
        if self.moving is not None:
            self.moving(fd, ino, True)

    def release_dir(self, fd: int) -> None:
        handle = self.dirs.pop(fd, None)
        if handle is not None:
            handle.stream.close()

    def ino_of(self, fd: int, *, directory: bool) -> int | None:
        """The inode of file (or *directory*) handle *fd*, if it is open."""
        handle = (self.dirs if directory else self.files).get(fd)
        return handle.ino if handle is not None else None
