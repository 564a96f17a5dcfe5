"""What may differ between a group's primary and its replica.

How this works: files are keyed by their backing inode number, which
survives renames and restarts. Per file there is a RegionSet of dirty data
regions and a "metadata dirty" flag (mode, owner, size, times, xattrs); per
directory a flag that its entries may differ. ``everything`` stands for "no
trustworthy tracking: compare the whole tree" (a new relationship, or state
that was lost). A path hint per key remembers where the entry was last seen,
to find it again cheaply at resync time.

Marks arrive as ``Marks`` values, built by the FUSE layer for each mutation:
applied when a mutation is not replicated (the link is down, or it touches
something still dirty during a resync) and when a replicated one is lost in
flight.

Caveats:
- Region numbers reach every 64-bit offset (one roaring bitmap per 16 TiB
  of file); ``regions_for`` raises RegionOverflow past that, never wraps.
- An inode number reused by a new file inherits the old file's dirty
  regions: harmless, they are only copied again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._regions import REGION_SIZE, RegionRange, RegionSet, regions_for

DIRTY_KIND = "fsrep-dirty"
UNNAMED = b"/"  # the path hint of a file whose name is not known (never a valid path): resync searches for it


@dataclass(frozen=True, slots=True)
class Marks:
    """The dirty effect of one mutation, should it not reach the replica."""

    regions: tuple[tuple[int, bytes, int, int], ...] = ()   # (ino, path, offset, length)
    meta: tuple[tuple[int, bytes], ...] = ()                # (ino, path)
    dirs: tuple[tuple[int, bytes], ...] = ()                # (directory ino, path)
    ancestors: tuple[int, ...] = ()                         # directories that must be clean to replicate
    parent: int | None = None                               # the directory holding the file of regions/meta

    def __bool__(self) -> bool:
        return bool(self.regions or self.meta or self.dirs)

    def rekeyed(self, inodes: Mapping[int, int], *, keep: bool = False) -> Marks:
        """These marks under the inode numbers *inodes* gives (see
        ``DirtySet.rekeyed``); what it maps to none dropped — or, with
        *keep*, left as it is (marks made just before a move's cutover,
        recorded after it: only some of their inodes moved)."""
        def ino(i: int) -> int | None:
            return inodes.get(i, i if keep else None)

        return Marks(regions=tuple((n, p, o, size) for i, p, o, size in self.regions if (n := ino(i)) is not None),
                     meta=tuple((n, p) for i, p in self.meta if (n := ino(i)) is not None),
                     dirs=tuple((n, p) for i, p in self.dirs if (n := ino(i)) is not None),
                     ancestors=tuple(n for i in self.ancestors if (n := ino(i)) is not None),
                     parent=ino(self.parent) if self.parent is not None else None)


@dataclass(frozen=True, slots=True)
class ClonedFrom:
    """Where a file cloned while out of sync came from: the source's path
    then, and the name of the copy of it kept for the resync (its clone
    backup; "" for none)."""

    src: bytes
    backup: str = ""


@dataclass(slots=True)
class _File:
    regions: RegionSet = field(default_factory=RegionSet)
    meta: bool = False


class DirtySet:
    """The dirty regions, metadata and directories of one group."""

    def __init__(self) -> None:
        self._files: dict[int, _File] = {}
        self._dirs: set[int] = set()
        self._heads: set[int] = set()  # directories whose files' first extents and metadata may differ
        self._hints: dict[int, bytes] = {}
        self.dirs_added = 0  # directories that became dirty, ever: a resync learns of new ones without a scan
        self._dir_marks: dict[int, int] = {}  # times each dirty directory was marked: a change while it is compared
        self._clones: dict[int, ClonedFrom] = {}  # dirty files made by a clone kept local
        self.everything = False
        self.reason = ""

    # --- marking ----------------------------------------------------------------

    def apply(self, marks: Marks) -> None:
        for ino, path, offset, length in marks.regions:
            self.mark_regions(ino, path, regions_for(offset, length))
        for ino, path in marks.meta:
            self.mark_meta(ino, path)
        for ino, path in marks.dirs:
            self.mark_dir(ino, path)

    def mark_regions(self, ino: int, path: bytes, regions: RegionRange) -> None:
        self._file(ino, path).regions.add(regions)

    def mark_meta(self, ino: int, path: bytes) -> None:
        self._file(ino, path).meta = True

    def mark_dir(self, ino: int, path: bytes) -> None:
        if ino not in self._dirs:
            self._dirs.add(ino)
            self.dirs_added += 1
        self._dir_marks[ino] = self._dir_marks.get(ino, 0) + 1
        self._hints[ino] = path

    def mark_heads(self, ino: int, path: bytes) -> None:
        """Every file in directory *ino* may differ in its first extent and
        metadata (the activity log's coarse record of small files)."""
        self.mark_dir(ino, path)
        self._heads.add(ino)

    def heads_dirty(self, ino: int) -> bool:
        return ino in self._heads

    def mark_clone(self, ino: int, path: bytes, src: bytes, backup: str = "") -> None:
        """Dirty file *ino* was made as a clone of *src* while the replica
        could not follow: a resync replays it as a clone of the replica's
        *src* (or of *backup*, the copy of it kept then, once the replica
        holds that) and compares the copy by digest instead of sending it
        whole. The caller marks its regions dirty; the record goes with
        them."""
        self._file(ino, path)
        self._clones[ino] = ClonedFrom(src, backup)

    def take_clone(self, ino: int) -> ClonedFrom | None:
        """Where *ino* was cloned from, once: None when it was not a clone
        kept local (or its record was taken)."""
        return self._clones.pop(ino, None)

    def clone_backups(self) -> dict[str, bytes]:
        """The clone backups the records name, each with the path its
        source had (the first record's)."""
        found: dict[str, bytes] = {}
        for record in self._clones.values():
            if record.backup:
                found.setdefault(record.backup, record.src)
        return found

    def mark_everything(self, reason: str) -> None:
        """Tracking cannot say what differs: the whole tree must be compared."""
        self.everything = True
        self.reason = reason

    def _file(self, ino: int, path: bytes) -> _File:
        self._hints[ino] = path
        entry = self._files.get(ino)
        if entry is None:
            entry = self._files[ino] = _File()
        return entry

    def merge(self, other: DirtySet) -> None:
        """Add everything *other* marks (a union: snapshots' changes since
        them are sums of these)."""
        for ino, theirs in other._files.items():
            mine = self._files.get(ino)
            if mine is None:
                mine = self._files[ino] = _File()
            mine.regions.update(theirs.regions)
            mine.meta |= theirs.meta
        for ino in other._dirs:
            if ino not in self._dirs:
                self._dirs.add(ino)
                self.dirs_added += 1
            self._dir_marks[ino] = self._dir_marks.get(ino, 0) + 1
        self._heads |= other._heads
        self._hints.update(other._hints)
        for ino, src in other._clones.items():
            if ino in self._files:
                self._clones.setdefault(ino, src)
        if other.everything and not self.everything:
            self.mark_everything(other.reason)

    def copy(self) -> DirtySet:
        copied = DirtySet()
        copied.merge(self)
        return copied

    # --- questions ------------------------------------------------------------------

    def blocks(self, marks: Marks) -> bool:
        """True when *marks* touch something still dirty, so the mutation
        must stay local (and dirty) during a resync: a dirty directory on
        its way, a dirty region, or dirty metadata."""
        if any(ino in self._dirs for ino in marks.ancestors):
            return True
        if any(ino in self._dirs for ino, _ in marks.dirs):
            return True
        if any(self.meta_dirty(ino) for ino, _ in marks.meta):
            return True
        return any(self.overlaps(ino, regions_for(offset, length)) for ino, _, offset, length in marks.regions)

    def __bool__(self) -> bool:
        return self.everything or bool(self._files) or bool(self._dirs)

    def overlaps(self, ino: int, regions: RegionRange) -> bool:
        """True when any of *regions* of *ino* is dirty."""
        entry = self._files.get(ino)
        return entry is not None and entry.regions.overlaps(regions)

    def count_in(self, ino: int, regions: RegionRange) -> int:
        """How many of *regions* of *ino* are dirty."""
        entry = self._files.get(ino)
        return 0 if entry is None else entry.regions.count(regions)

    def meta_dirty(self, ino: int) -> bool:
        entry = self._files.get(ino)
        return entry is not None and entry.meta

    def dir_dirty(self, ino: int) -> bool:
        return ino in self._dirs

    def dir_marks(self, ino: int) -> int:
        """How often directory *ino* was marked since it was last clean: a
        comparison spread over several steps tells a change made meanwhile
        by a different count at its end."""
        return self._dir_marks.get(ino, 0)

    def hint(self, ino: int) -> bytes | None:
        return self._hints.get(ino)

    @property
    def dirty_bytes(self) -> int:
        return sum(len(f.regions) for f in self._files.values()) * REGION_SIZE

    def files(self) -> list[int]:
        return sorted(self._files)

    def dirs(self) -> list[int]:
        return sorted(self._dirs)

    @property
    def dir_count(self) -> int:
        return len(self._dirs)

    def ranges(self, ino: int, start: int = 0) -> Iterator[RegionRange]:
        """Dirty runs of *ino* at or after region *start*."""
        entry = self._files.get(ino)
        return iter(()) if entry is None else entry.regions.ranges(start)

    # --- draining --------------------------------------------------------------------

    def clean_regions(self, ino: int, regions: RegionRange) -> None:
        """*regions* were copied (in the same step that read them)."""
        entry = self._files.get(ino)
        if entry is not None:
            entry.regions.discard(regions)
            self._drop_if_clean(ino, entry)

    def drop_regions(self, ino: int) -> None:
        """*ino* no longer holds file data (its number was reused)."""
        entry = self._files.get(ino)
        if entry is not None:
            entry.regions = RegionSet()
            self._drop_if_clean(ino, entry)

    def clean_meta(self, ino: int) -> None:
        entry = self._files.get(ino)
        if entry is not None:
            entry.meta = False
            self._drop_if_clean(ino, entry)

    def forget_file(self, ino: int) -> None:
        """The inode no longer exists on the primary: nothing to copy."""
        self._files.pop(ino, None)
        self._clones.pop(ino, None)
        if ino not in self._dirs:
            self._hints.pop(ino, None)

    def clean_dir(self, ino: int) -> None:
        self._dirs.discard(ino)
        self._heads.discard(ino)
        self._dir_marks.pop(ino, None)
        if ino not in self._files:
            self._hints.pop(ino, None)

    def clean_everything(self) -> None:
        self.everything = False
        self.reason = ""

    def _drop_if_clean(self, ino: int, entry: _File) -> None:
        if not entry.meta and not entry.regions:
            del self._files[ino]
            self._clones.pop(ino, None)
            if ino not in self._dirs:
                self._hints.pop(ino, None)

    def rekeyed(self, inodes: Mapping[int, int]) -> DirtySet:
        """This set with every inode number given the one *inodes* maps it
        to, and what it maps to none dropped: the group's data was copied
        to another file system (``fsrep-move``), where each inode has
        another number. An inode not copied was removed before the copy
        was finished (its directory is marked, which is what a resync
        needs) or had no name left."""
        out = DirtySet()
        out.everything, out.reason, out.dirs_added = self.everything, self.reason, self.dirs_added
        out._files = {inodes[ino]: entry for ino, entry in self._files.items() if ino in inodes}
        out._dirs = {inodes[ino] for ino in self._dirs if ino in inodes}
        out._heads = {inodes[ino] for ino in self._heads if ino in inodes}
        out._hints = {inodes[ino]: path for ino, path in self._hints.items() if ino in inodes}
        out._dir_marks = {inodes[ino]: count for ino, count in self._dir_marks.items() if ino in inodes}
        out._clones = {inodes[ino]: record for ino, record in self._clones.items() if ino in inodes}
        return out

    # --- persistence -------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able snapshot; region sets in roaring's serialization."""
        return {
            "everything": self.everything,
            "reason": self.reason,
            "files": {str(ino): {"meta": f.meta, "bits": base64.b64encode(f.regions.to_bytes()).decode()}
                      for ino, f in self._files.items()},
            "dirs": sorted(self._dirs),
            "heads": sorted(self._heads),
            "hints": {str(ino): path.hex() for ino, path in self._hints.items()},
            "clones": {str(ino): [c.src.hex(), c.backup] if c.backup else c.src.hex()
                       for ino, c in self._clones.items()},
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> DirtySet:
        """Rebuild from ``to_payload``.

        Raises:
            ValueError: the payload is not a dirty set (callers turn this
                into StateCorrupt; never an empty, clean set).
        """
        dirty = cls()
        try:
            dirty.everything = bool(payload["everything"])
            dirty.reason = str(payload["reason"])
            for ino, f in payload["files"].items():
                entry = dirty._files[int(ino)] = _File(meta=bool(f["meta"]))
                if "bits" in f:
                    entry.regions = RegionSet.from_bytes(base64.b64decode(f["bits"], validate=True))
                for first, count in f.get("runs", ()):  # as fsrep wrote them before region sets were serialized
                    entry.regions.add(RegionRange(int(first), int(count)))
            dirty._dirs = {int(ino) for ino in payload["dirs"]}
            dirty._heads = {int(ino) for ino in payload.get("heads", [])} & dirty._dirs
            dirty._hints = {int(ino): bytes.fromhex(path) for ino, path in payload["hints"].items()}
            dirty._clones = {int(ino): _cloned_from(record) for ino, record in payload.get("clones", {}).items()
                             if int(ino) in dirty._files}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a dirty set: {exc!r}") from None
        return dirty


def _cloned_from(record: Any) -> ClonedFrom:
    """A clone record as saved: the source's path in hex, or [that, the
    backup's name]."""
    if isinstance(record, str):
        return ClonedFrom(bytes.fromhex(record))
    src, backup = record
    if not isinstance(backup, str):
        raise ValueError(f"a clone backup's name is a string, not {backup!r}")
    return ClonedFrom(bytes.fromhex(src), backup)
