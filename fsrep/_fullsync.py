"""Full resync: make a stale replica equal to the primary store by emptying
it and sending the whole tree — namespace first within each directory, data
as sparse-aware writes, then attributes.

This is the fallback that is always correct: it needs no tracking. It runs
before the filesystem is mounted or, when mounted, while new mutations wait
at the gate (``ResyncStream.holding_mutations``), so nothing changes the
store meanwhile. Quick resync (``_resync``) is the common case and moves
only what changed.

Caveats:
- Directories' times are set after their contents, deepest first, so
  creating children does not disturb them.
"""

from __future__ import annotations

import logging
import os
import stat

import trio

import transport as tp

from ._copying import MAX_IN_FLIGHT, attributes, creation, xattrs
from ._progress import ResyncRun
from ._sparse import data_segments
from ._stream import ResyncStream
from ._tree import Tree

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
REPORT_EVERY = 5.0


class _Progress:
    """Counts what a full resync sent, into the run the operator watches,
    and logs a line every REPORT_EVERY seconds."""

    def __init__(self, group: str, run: ResyncRun) -> None:
        self.group = group
        self.run = run
        self.entries = 0
        self.first_bytes = run.copied_bytes
        self.start = self.last = trio.current_time()

    def tick(self, nbytes: int = 0, entries: int = 0) -> None:
        self.entries += entries
        now = trio.current_time()
        if nbytes:
            self.run.copied(nbytes, now)
        if now - self.last >= REPORT_EVERY:
            self.last = now
            log.info("group %s: full resync: %d entries, %d of %d bytes sent (%.1f MiB/s)", self.group, self.entries,
                     self.run.copied_bytes, self.run.copy_total, self.run.rate(now) / 2**20)


async def full_resync(stream: ResyncStream, tree: Tree, run: ResyncRun) -> None:
    """Bring the replica of *stream*'s group to the primary's state.

    Raises:
        LinkDown: the link failed; the group stays OutOfSync (stale).
    """
    stream.begin_resync(f"full resync: {stream.dirty.reason}")
    run.copy_total = run.copied_bytes + tree.data_bytes()
    progress = _Progress(stream.record.id, run)
    stream.send(lambda seq: tp.Purge(seq=seq))
    hard_links: dict[int, bytes] = {}
    directories: list[tuple[bytes, os.stat_result]] = []
    for path, st in tree.walk():
        await _send_entry(stream, tree, path, st, hard_links, progress)
        if stat.S_ISDIR(st.st_mode):
            directories.append((path, st))
        progress.tick(entries=1)
    root = tree.lstat(b"")
    stream.send(attributes(b"", root, tp.ATTR_MODE | tp.ATTR_UID | tp.ATTR_GID))
    _send_xattrs(stream, tree, b"")
    for path, st in [*reversed(directories), (b"", root)]:
        stream.send(attributes(path, st, tp.ATTR_TIMES))
    stream.send(lambda seq: tp.Fsync(seq=seq, path=b"", whole=1))
    await stream.all_acked()  # until then, a lost link leaves "everything" dirty
    stream.replica_matches()  # nothing can change while writers are held
    await stream.finish_resync()
    elapsed = trio.current_time() - progress.start
    sent = run.copied_bytes - progress.first_bytes
    stream.ran(sent, elapsed)
    log.info("group %s: full resync complete: %d entries, %d bytes in %.1fs", stream.record.id, progress.entries,
             sent, elapsed)


async def _send_entry(stream: ResyncStream, tree: Tree, path: bytes, st: os.stat_result,
                      hard_links: dict[int, bytes], progress: _Progress) -> None:
    mode = st.st_mode
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        first = hard_links.setdefault(st.st_ino, path)
        if first != path:
            stream.send(lambda seq: tp.Link(seq=seq, target=first, new=path))
            return
    stream.send(creation(tree, path, st))
    if stat.S_ISLNK(mode):
        stream.send(attributes(path, st, tp.ATTR_TIMES))  # the symlink's own times
        return
    if stat.S_ISREG(mode):
        await _send_data(stream, tree, path, st, progress)
        stream.send(attributes(path, st, tp.ATTR_SIZE))
    _send_xattrs(stream, tree, path)
    if not stat.S_ISDIR(mode):
        stream.send(attributes(path, st, tp.ATTR_TIMES))


async def _send_data(stream: ResyncStream, tree: Tree, path: bytes, st: os.stat_result, progress: _Progress) -> None:
    fd = tree.open_regular(path, os.O_RDONLY)
    try:
        for start, end in data_segments(fd, 0, st.st_size):
            offset = start
            while offset < end:
                data = os.pread(fd, min(CHUNK, end - offset), offset)
                if not data:
                    break
                stream.send(lambda seq, offset=offset, data=data: tp.Write(seq=seq, path=path, offset=offset,
                                                                           data=data))
                offset += len(data)
                progress.tick(nbytes=len(data))
                await stream.throttle(MAX_IN_FLIGHT)
                pause = progress.run.pause_for(len(data), trio.current_time())
                if pause:
                    await trio.sleep(pause)
    finally:
        os.close(fd)


def _send_xattrs(stream: ResyncStream, tree: Tree, path: bytes) -> None:
    for frame in xattrs(tree, path, drop_others=False):  # an emptied replica has no others
        stream.send(frame)
