"""Full resync: make a stale replica equal to the primary store by emptying
it and sending the whole tree — namespace first within each directory, data
as sparse-aware writes, then attributes.

This is the fallback that is always correct: it needs no tracking. It runs
before the filesystem is mounted or, when mounted, while new mutations wait
at the gate (``Relationship.holding_mutations``), so nothing changes the
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

import tracking
import transport as tp

from ._copying import MAX_IN_FLIGHT, attributes, creation, xattrs
from ._progress import ResyncRun
from ._sparse import data_segments
from ._splitter import Relationship
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


async def full_resync(rel: Relationship, tree: Tree, run: ResyncRun) -> None:
    """Bring the replica of *rel* to the primary's state.

    Raises:
        LinkDown: the link failed; the group stays OutOfSync (stale).
    """
    rel.begin_resync(f"full resync: {rel.dirty.reason}")
    run.copy_total = run.copied_bytes + _data_bytes(tree)
    progress = _Progress(rel.record.id, run)
    rel.send(lambda seq: tp.Purge(seq=seq))
    hard_links: dict[int, bytes] = {}
    directories: list[tuple[bytes, os.stat_result]] = []
    for path, st in tree.walk():
        await _send_entry(rel, tree, path, st, hard_links, progress)
        if stat.S_ISDIR(st.st_mode):
            directories.append((path, st))
        progress.tick(entries=1)
    root = tree.lstat(b"")
    rel.send(attributes(b"", root, tp.ATTR_MODE | tp.ATTR_UID | tp.ATTR_GID))
    _send_xattrs(rel, tree, b"")
    for path, st in [*reversed(directories), (b"", root)]:
        rel.send(attributes(path, st, tp.ATTR_TIMES))
    rel.send(lambda seq: tp.Fsync(seq=seq, path=b"", whole=1))
    await rel.all_acked()  # until then, a lost link leaves "everything" dirty
    rel.dirty = tracking.DirtySet()  # the replica now matches: nothing can change while writers are held
    await rel.finish_resync()
    elapsed = trio.current_time() - progress.start
    sent = run.copied_bytes - progress.first_bytes
    rel.resync_bytes += sent
    rel.last_resync_seconds = elapsed
    log.info("group %s: full resync complete: %d entries, %d bytes in %.1fs", rel.record.id, progress.entries,
             sent, elapsed)


async def _send_entry(rel: Relationship, tree: Tree, path: bytes, st: os.stat_result,
                      hard_links: dict[int, bytes], progress: _Progress) -> None:
    mode = st.st_mode
    if not stat.S_ISDIR(mode) and st.st_nlink > 1:
        first = hard_links.setdefault(st.st_ino, path)
        if first != path:
            rel.send(lambda seq: tp.Link(seq=seq, target=first, new=path))
            return
    rel.send(creation(tree, path, st))
    if stat.S_ISLNK(mode):
        rel.send(attributes(path, st, tp.ATTR_TIMES))  # the symlink's own times
        return
    if stat.S_ISREG(mode):
        await _send_data(rel, tree, path, st, progress)
        rel.send(attributes(path, st, tp.ATTR_SIZE))
    _send_xattrs(rel, tree, path)
    if not stat.S_ISDIR(mode):
        rel.send(attributes(path, st, tp.ATTR_TIMES))


async def _send_data(rel: Relationship, tree: Tree, path: bytes, st: os.stat_result, progress: _Progress) -> None:
    fd = tree.open_regular(path, os.O_RDONLY)
    try:
        for start, end in data_segments(fd, 0, st.st_size):
            offset = start
            while offset < end:
                data = os.pread(fd, min(CHUNK, end - offset), offset)
                if not data:
                    break
                rel.send(lambda seq, offset=offset, data=data: tp.Write(seq=seq, path=path, offset=offset, data=data))
                offset += len(data)
                progress.tick(nbytes=len(data))
                await rel.throttle(MAX_IN_FLIGHT)
                pause = progress.run.pause_for(len(data), trio.current_time())
                if pause:
                    await trio.sleep(pause)
    finally:
        os.close(fd)


def _data_bytes(tree: Tree) -> int:
    """Bytes of data (holes excluded, roughly: allocated blocks) under the
    root — what a full copy will send, for its progress bar."""
    return sum(min(st.st_size, st.st_blocks * 512) for _, st in tree.walk() if stat.S_ISREG(st.st_mode))


def _send_xattrs(rel: Relationship, tree: Tree, path: bytes) -> None:
    for frame in xattrs(tree, path, drop_others=False):  # an emptied replica has no others
        rel.send(frame)
