"""Checksum mode's comparison of file data: every regular file is compared
with the replica's by region digests, and what differs becomes dirty for
the quick resync's file phase to copy.

Only where either side holds data: the replica says where its data lies
(ListData), this side looks with SEEK_DATA, and a stretch that is a hole on
both is equal without a byte read — a 17 TiB sparse file costs what its
data costs. Each question is asked in the step that reads this side, so
both answers are of one point of the operation stream; a file that moves
meanwhile is copied instead of compared.

A settling comparison (``settle=True``) is for files whose dirty regions
stand for "not known to match" rather than "changed" (a clone replayed as
a clone, a path an operator named): it also cleans the regions it finds
equal. Each is cleaned in the step that reads this side — a hole on both
sides when its data map is read; data when it is digested, the question
carrying those regions as its marks, so a lost link or a crash before the
answer leaves them dirty — and what the answer says differs is marked
again. A client's write after that step finds the region clean and follows
the question in the stream, or lands in a dirty directory and marks it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence

import trio

import tracking
import transport as tp

from ._pipeline import NO_MARKS
from ._progress import ResyncRun
from ._sparse import data_segments
from ._stream import ResyncStream
from ._tree import Tree

log = logging.getLogger(__name__)


class Verification:
    """One checksum pass over the files of a group."""

    def __init__(self, stream: ResyncStream, tree: Tree, progress: ResyncRun, *, settle: bool = False) -> None:
        self.stream = stream
        self.dirty = stream.dirty
        self.tree = tree
        self.progress = progress
        self.settle = settle

    async def run(self, files: Sequence[tuple[bytes, int, int]]) -> None:
        """Compare *files* ((path, inode, size) each)."""
        total = sum(size for _, _, size in files)
        self.progress.check_total = self.progress.check_total + total if self.settle else total
        for path, ino, size in files:
            if not self.settle and self._wholly_dirty(ino, size):
                self.progress.checked(size, 0, trio.current_time())  # copied whole anyway
                continue
            offset = 0
            while offset < size:
                end = await self._compare_window(path, ino, offset, size)
                if end is None:  # moved or gone meanwhile: what was not compared is copied instead
                    self._uncompared(path, ino, offset, size)
                    break
                offset = end

    async def _compare_window(self, path: bytes, ino: int, offset: int, size: int) -> int | None:
        """Compare the file from byte *offset* as far as one DataMap of the
        replica reaches; returns that end, or None when the file moved."""
        region = tracking.REGION_SIZE
        reply = self._ask_data_map(path, ino, offset, size - offset)
        if reply is None:
            return None
        theirs = await reply()
        assert isinstance(theirs, tp.DataMap)
        end = min(theirs.end, size)
        spans = self._data_spans(path, ino, offset, end, theirs.run_list())
        if spans is None:
            return None
        if self.settle:
            self._clean_holes(ino, offset, end, size, spans)
        compared = 0
        for first, stop in spans:
            for at in range(first, stop, tp.MAX_CHECKSUM_REGIONS):
                count = min(tp.MAX_CHECKSUM_REGIONS, stop - at)
                asked = self._ask_digests(path, ino, at * region, count * region)
                if asked is None:
                    return None
                mine, answer = asked
                digests = await answer()
                assert isinstance(digests, tp.Digests)
                self._compare(path, ino, at * region, mine, digests.digests)
                compared += min(count * region, size - at * region)
        if end - offset > compared:
            self.progress.checked(end - offset - compared, 0, trio.current_time())  # holes on both sides
        return end

    def _uncompared(self, path: bytes, ino: int, offset: int, size: int) -> None:
        """The file moved or went during its comparison: what was not
        compared is copied instead."""
        self.stream.mark_stale("a checksum resync could not compare a file that moved")
        self.dirty.mark_regions(ino, path, tracking.regions_for(offset, size - offset))
        self.dirty.mark_meta(ino, path)
        self.progress.checked(size - offset, 0, trio.current_time())

    def _ask_data_map(self, path: bytes, ino: int, offset: int,
                      length: int) -> Callable[[], Awaitable[tp.Frame]] | None:
        if not self._is(path, ino):
            return None
        return self.stream.ask(lambda seq: tp.ListData(seq=seq, path=path, offset=offset, length=length))

    def _data_spans(self, path: bytes, ino: int, offset: int, end: int,
                    theirs: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        """Region ranges [first, stop) within bytes offset..end where this
        side or the replica (*theirs*) holds data, merged; None when the
        file is no longer at *path*."""
        if not self._is(path, ino):
            return None
        region = tracking.REGION_SIZE
        try:
            fd = self.tree.open_regular(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            mine = list(data_segments(fd, offset, end))
        finally:
            os.close(fd)
        runs = sorted([(a, b) for a, b in mine] + [(a, a + n) for a, n in theirs if a < end])
        spans: list[tuple[int, int]] = []
        for a, b in runs:
            first, stop = max(a, offset) // region, -(-min(b, end) // region)
            if first >= stop:
                continue
            if spans and first <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], stop))
            else:
                spans.append((first, stop))
        return spans

    def _clean_holes(self, ino: int, offset: int, end: int, size: int, spans: list[tuple[int, int]]) -> None:
        """Settling: the regions wholly within bytes offset..end (the last
        one reaching past *size* counts as within) where neither side holds
        data are equal. In the step that read this side's data map."""
        region = tracking.REGION_SIZE
        cursor = -(-offset // region)
        last = -(-end // region) if end >= size else end // region
        for first, stop in [*spans, (last, last)]:
            first = min(first, last)
            if first > cursor:
                self.dirty.clean_regions(ino, tracking.RegionRange(cursor, first - cursor))
            cursor = max(cursor, stop)

    def _is(self, path: bytes, ino: int) -> bool:
        """Whether regular file *ino* is still at *path*."""
        try:
            st = self.tree.lstat(path)
        except OSError:
            return False
        return st.st_ino == ino and stat.S_ISREG(st.st_mode)

    def _wholly_dirty(self, ino: int, size: int) -> bool:
        regions = tracking.regions_for(0, size)
        return self.dirty.count_in(ino, regions) >= regions.count

    def _ask_digests(self, path: bytes, ino: int, offset: int,
                     length: int) -> tuple[bytes, Callable[[], Awaitable[tp.Frame]]] | None:
        """Digest regions here and ask for the replica's — one step. None
        when the file is no longer at *path* (it moved or went; a move is
        replicated like any change)."""
        if not self._is(path, ino):
            return None
        count = -(-length // tracking.REGION_SIZE)
        mine = self.tree.digests(path, offset, count)
        marks = NO_MARKS
        if self.settle:
            marks = tracking.Marks(regions=((ino, path, offset, count * tracking.REGION_SIZE),))
            self.dirty.clean_regions(ino, tracking.regions_for(offset, count * tracking.REGION_SIZE))
        reply = self.stream.ask(lambda seq: tp.Checksum(seq=seq, path=path, offset=offset, count=count), marks)
        return mine, reply

    def _compare(self, path: bytes, ino: int, offset: int, mine: bytes, theirs: bytes) -> None:
        size = tp.DIGEST_SIZE
        first = offset // tracking.REGION_SIZE
        mismatched = 0
        for i in range(len(mine) // size):
            if mine[i * size:(i + 1) * size] != theirs[i * size:(i + 1) * size]:
                if not self.settle:
                    self.stream.mark_stale("a checksum resync found regions that differ")
                self.dirty.mark_regions(ino, path, tracking.RegionRange(first + i, 1))
                mismatched += tracking.REGION_SIZE
        if mismatched and not self.settle:
            log.info("group %s: checksum: %d bytes of %r differ from the replica", self.stream.record.id,
                     mismatched, path)
        self.progress.checked(len(mine) // size * tracking.REGION_SIZE, mismatched, trio.current_time())
