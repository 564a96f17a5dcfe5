"""The primary's copy for a large ``fsrep clone``, made in a worker thread
so the mount keeps serving while a file system without reflinks copies
gigabytes.

How this works: the data is copied (``clone_data``: a reflink where the
file system has them) into an unnamed file (O_TMPFILE) of the
destination's directory, off the event loop, while a ``SourceWatch`` on
the group's recorder notes every region of the source that a change
touches meanwhile. Then, in the one step that replicates the clone, those
regions are copied again from the source, the size set to the source's,
and the file linked under its name: the copy holds what the source holds
at the clone's place in the operation stream — what the replica copies
from its own source at that place.

Caveats:
- A source written all over while it is copied has those regions copied
  twice, the second time in the replicating step.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

import trio

import tracking

from ._recorder import Recorder
from ._sparse import clone_data, pwrite_all

ASIDE_AT = 16 * 1024 * 1024  # a source this large is copied aside; a smaller one in the replicating step
CHUNK = 1024 * 1024
MERGE_AT = 4096  # regions noted before they are merged
NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)  # a file system without unnamed files


class SourceWatch:
    """A tracker (see ``_recorder``) noting the regions of one inode that
    changes touch."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.regions: list[tuple[int, int]] = []  # (offset, length)

    def record(self, marks: tracking.Marks, seq: int) -> None:
        self.regions.extend((offset, length) for ino, _, offset, length in marks.regions if ino == self.ino)
        if len(self.regions) > MERGE_AT:  # bounded by the runs the source holds, not by its writes
            self.regions = _merged(self.regions)


class AsideCopy:
    """An unnamed copy of a source, made while clients write on."""

    def __init__(self, src: int, copy: int, watch: SourceWatch, recorder: Recorder) -> None:
        self.src, self.copy, self.watch, self.recorder = src, copy, watch, recorder

    def finish(self, dir_fd: int, name: bytes, mode: int, uid: int, gid: int) -> None:
        """In the replicating step: bring the copy up to the source (what
        changed while it was made), own it, and link it as *name* of
        *dir_fd*.

        Raises:
            OSError: as the system calls (EEXIST for a name taken meanwhile).
        """
        size = os.fstat(self.src).st_size
        for offset, length in _merged(self.watch.regions):
            end = min(offset + length, size)
            while offset < end:
                data = os.pread(self.src, min(CHUNK, end - offset), offset)
                if not data:
                    break
                pwrite_all(self.copy, data, offset)
                offset += len(data)
        os.ftruncate(self.copy, size)
        os.fchown(self.copy, uid, gid)
        os.fchmod(self.copy, stat.S_IMODE(mode))
        os.link(f"/proc/self/fd/{self.copy}", name, dst_dir_fd=dir_fd, follow_symlinks=True)

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.recorder.trackers.remove(self.watch)
        os.close(self.src)
        os.close(self.copy)


async def copy_aside(src: int, dir_fd: int, ino: int, recorder: Recorder) -> AsideCopy | None:
    """Copy source *src* (an open descriptor of inode *ino*; taken over)
    into an unnamed file of directory *dir_fd*, in a worker thread, with
    its changes meanwhile watched; the caller finishes or closes it. None
    when the file system makes no unnamed files (the caller copies in the
    replicating step instead).

    Raises:
        OSError: the unnamed file could not be made or written.
    """
    try:
        copy = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except BaseException as exc:
        os.close(src)
        if isinstance(exc, OSError) and exc.errno in NO_TMPFILE:
            return None
        raise
    watch = SourceWatch(ino)
    recorder.trackers.append(watch)
    aside = AsideCopy(src, copy, watch, recorder)
    try:
        await trio.to_thread.run_sync(clone_data, src, copy)
    except BaseException:
        aside.close()
        raise
    return aside


def _merged(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for offset, length in sorted(regions):
        if out and offset <= out[-1][0] + out[-1][1]:
            last = out[-1]
            out[-1] = (last[0], max(last[1], offset + length - last[0]))
        else:
            out.append((offset, length))
    return out
