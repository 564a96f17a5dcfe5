"""The activity log: crash safety for what is in flight, without a disk
write per write (DRBD's activity log, by file).

How this works: the file's bytes are grouped in coarse extents (4 MiB). An
extent must be recorded durably as *active* before the first write into it
that is not already covered; a bounded hot set stays active, so a steady
workload writes the log rarely. Directories touched by namespace changes are
recorded the same way. After a crash of the primary, everything active may
differ from the replica: dirty := persisted dirty set ∪ active extents.

This class is the bookkeeping only; the caller persists ``payload()`` (with
``tracking.save_state``) whenever ``touch`` says so, before applying the
change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ._dirty import DirtySet, Marks
from ._regions import REGION_SIZE, RegionRange

EXTENT_SIZE = 4 * 1024 * 1024
LOCAL_SEQ = 2**63  # the "seq" of a change kept local: active until the dirty set holding it is saved
ACTIVITY_KIND = "fsrep-activity"
HOT_EXTENTS = 256

Extent = tuple[int, int, int]  # (ino, first extent, count), or (directory ino, ENTRIES | FILE_HEADS, 1)
ENTRIES = -1     # a directory's entries
FILE_HEADS = -2  # the first extent and metadata of every file in a directory: one record for many small files
SPAN = 8  # a change over more extents than this (a truncate, a rename of a large file) is one record


class ActivityLog:
    def __init__(self, hot: int = HOT_EXTENTS) -> None:
        self._hot = hot
        self._active: OrderedDict[Extent, tuple[bytes, int]] = OrderedDict()  # -> (path hint, last seq)
        self._durable: set[Extent] = set()
        self._unsaved = False

    def touch(self, marks: Marks, seq: int, acked: int) -> bool:
        """Record that *marks* (operation *seq*) is about to be applied;
        *acked* is the group's last acknowledged sequence number. Returns
        True when the log must be persisted before the change is applied.

        Only extents whose last operation was acknowledged leave the hot
        set, so an extent with a change in flight is always in the log.
        """
        needed = self._unsaved
        for ino, path, offset, length in marks.regions:
            first = offset // EXTENT_SIZE
            last = (offset + max(length, 1) - 1) // EXTENT_SIZE
            if first == 0 and marks.parent is not None:
                needed |= self._activate((marks.parent, FILE_HEADS, 1), _parent_path(path), seq)
                first = 1
            if last - first + 1 > SPAN:
                needed |= self._activate((ino, first, last - first + 1), path, seq)
                continue
            for extent in range(first, last + 1):
                needed |= self._activate((ino, extent, 1), path, seq)
        for ino, path in marks.meta:
            if marks.parent is not None:
                needed |= self._activate((marks.parent, FILE_HEADS, 1), _parent_path(path), seq)
            else:
                needed |= self._activate((ino, ENTRIES, 1), path, seq)
        for ino, path in marks.dirs:
            needed |= self._activate((ino, ENTRIES, 1), path, seq)
        if needed:
            while len(self._active) > self._hot:
                oldest = next(iter(self._active))
                if self._active[oldest][1] > acked:
                    break
                del self._active[oldest]
            self._durable = set(self._active)
            self._unsaved = False  # the caller persists now (and calls save_failed if it cannot)
        return needed

    def save_failed(self) -> None:
        """The payload asked for could not be persisted: the next touch asks
        again, whatever it touches."""
        self._unsaved = True

    def _activate(self, extent: Extent, path: bytes, seq: int) -> bool:
        known = extent in self._active
        self._active[extent] = (path, seq)
        self._active.move_to_end(extent)
        return not known and extent not in self._durable

    def __len__(self) -> int:
        return len(self._active)

    def settle(self) -> None:
        """The dirty set was saved: local-only changes are in it, so their
        extents may leave the hot set."""
        for extent, (path, seq) in self._active.items():
            if seq == LOCAL_SEQ:
                self._active[extent] = (path, 0)

    def rekey(self, inodes: Mapping[int, int]) -> None:
        """Give every extent its inode's number on another file system
        (see ``DirtySet.rekeyed``): the log must be persisted again before
        the next change."""
        self._active = OrderedDict(((inodes[ino], ext, count), value)
                                   for (ino, ext, count), value in self._active.items() if ino in inodes)
        self._durable = set()
        self._unsaved = True

    def saved(self) -> None:
        """The payload was persisted outside ``touch`` (after ``rekey``)."""
        self._durable = set(self._active)
        self._unsaved = False

    def payload(self) -> dict[str, Any]:
        return {"extents": [[ino, ext, path.hex(), count] for (ino, ext, count), (path, _) in self._active.items()]}

    @staticmethod
    def recover(payload: dict[str, Any], dirty: DirtySet) -> int:
        """Mark every extent that was active at a crash dirty; returns how
        many.

        Raises:
            ValueError: the payload is not an activity log.
        """
        try:
            # Each entry is [ino, extent, path] (one extent; logs written before spans) or [..., count].
            extents = [(int(e[0]), int(e[1]), bytes.fromhex(e[2]), int(e[3]) if len(e) > 3 else 1)
                       for e in payload["extents"]]
            per_extent = EXTENT_SIZE // REGION_SIZE
            for ino, ext, path, count in extents:
                if ext == FILE_HEADS:
                    dirty.mark_heads(ino, path)
                elif ext < 0:
                    dirty.mark_dir(ino, path)
                    dirty.mark_meta(ino, path)
                else:
                    dirty.mark_regions(ino, path, RegionRange(ext * per_extent, count * per_extent))
                    dirty.mark_meta(ino, path)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"not an activity log: {exc!r}") from None
        return len(extents)


def _parent_path(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]
