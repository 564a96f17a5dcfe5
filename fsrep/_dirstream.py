"""An open directory read a batch at a time, from any offset its own
filesystem gave: what a FUSE readdir needs to serve a listing without
holding a copy of it.

How this works: the kernel calls readdir with the offset to go on from —
the offset it was given with the last entry it took, 0 to start — and
keeps nothing else. A ``DirStream`` holds the directory's descriptor, the
offset of its next entry and what is left of the last getdents64 batch
(at most ``BATCH`` bytes), so its memory does not depend on the size of
the directory. A readdir that goes on where the last one stopped reads on
from that batch: the filesystem's own sequential reading, which neither
loses nor repeats an entry while the directory changes (an entry added or
removed meanwhile may show or not, as POSIX allows). Any other offset (a
rewind to 0, a seekdir) is an lseek to it, resolved by the filesystem as
for a local program; libfuse's passthrough_ll serves readdir the same way.

Caveats:
- Offsets are the filesystem's own (hash positions on ext4 and XFS,
  counters on tmpfs and btrfs): meaningful only to lseek on the same
  directory, and passed to the kernel as they are.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from ._sparse import getdents64

BATCH = 8192  # bytes read per getdents64: a few hundred names, more than one FUSE reply holds
_HEAD = struct.Struct("=QqHB")  # d_ino, d_off, d_reclen, d_type: the fixed start of a linux_dirent64


class DirStream:
    """The entries of one open directory, with the offset after each.

    Owns *fd* (an ``O_RDONLY | O_DIRECTORY`` descriptor) from here on:
    ``close()`` closes it."""

    __slots__ = ("fd", "offset", "_batch", "_at")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.offset = 0  # where the next entry starts, as the filesystem names it
        self._batch = b""  # the rest of the last getdents64 batch, not yet read from _at on
        self._at = 0

    def entries(self, offset: int) -> Iterator[tuple[bytes, int]]:
        """(name, offset after it) of each entry from *offset* on, ``.``
        and ``..`` included, in the filesystem's order.

        An entry counts as read once the next one is asked for: the one a
        caller stops at (a reply that was full) comes first again when the
        next call goes on from ``self.offset``.

        Raises:
            OSError: as lseek(2) for an offset the filesystem refuses, as
                getdents64(2) for a directory that is gone (ENOENT).
        """
        if offset != self.offset:
            os.lseek(self.fd, offset, os.SEEK_SET)
            self.offset, self._batch, self._at = offset, b"", 0
        while True:
            if self._at >= len(self._batch):
                self._batch, self._at = getdents64(self.fd, BATCH), 0
                if not self._batch:
                    return
            _, after, length, _ = _HEAD.unpack_from(self._batch, self._at)
            start = self._at + _HEAD.size
            name = self._batch[start:self._batch.index(b"\0", start, self._at + length)]
            yield name, after
            self._at += length
            self.offset = after

    def moved(self) -> None:
        """The descriptor names another directory now (a move's copy of
        this one): the next read seeks to the offset it is asked for."""
        self.offset, self._batch, self._at = -1, b"", 0

    def close(self) -> None:
        self._batch = b""
        os.close(self.fd)
