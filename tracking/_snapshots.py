"""Pseudo snapshots: named common points of a group's operation stream, and
what changed on one side since each.

How this works: a snapshot copies no data. It is a ``SnapshotId`` — a name
and the position (generation, seq) of the stream where both sides agree —
plus, from then on, a record of what changed on this side. The records
nest (what changed since an older snapshot includes what changed since a
newer one), so a chain keeps one *delta* per snapshot: the changes between
it and the next one, the newest's growing. What changed since snapshot *i*
is the union of the deltas from *i* on; retiring a snapshot folds its delta
into the one before it, so a change is recorded once however many
snapshots are kept, and retiring the oldest frees its record.

The primary also keeps, per snapshot, its **intercept log**: what it
applied while the snapshot was being taken (between the start of the first
drain and its own snapshot). The two sides' snapshots differ at most there,
so what may differ between them later is

    changes here since it  ∪  changes there since it  ∪  its intercept log.

A chain is generic over what a delta is: the primary's ``DirtySet`` (keyed
by backing inode) or the secondary's ``PathChanges`` (keyed by path: the
secondary applies frames by path, and reports its changes to the primary
by path). ``PathChanges`` is a trie, so a directory's rename moves its
whole record in one step.

Caveats:
- A chain holds at most MAX_SNAPSHOTS snapshots; adding one more is
  refused (the caller retires one first).
- ``PathChanges`` keeps what a path's entry became, not where a file came
  from: a renamed file is marked whole at its new name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar

from ._activity import EXTENT_SIZE
from ._dirty import UNNAMED, DirtySet, Marks
from ._regions import RegionRange, RegionSet, regions_for

SNAPSHOTS_KIND = "fsrep-snapshots"
MAX_SNAPSHOTS = 64
AUTO_PREFIX = "auto-"  # the points taken by fsrep itself when a group leaves InSync
MAX_RUNS_PER_CHANGE = 8192  # a path with more dirty runs than this is reported whole
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}")


class SnapshotError(ValueError):
    """Raised when a snapshot cannot be added or found: a bad or taken
    name, a full chain, an unknown name. The message is one line for the
    operator."""


def check_name(name: str) -> str:
    """*name*, if it can name a snapshot.

    Raises:
        SnapshotError: it cannot (1..64 letters, digits and ``._:+-``,
            starting with a letter or digit).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SnapshotError(f"snapshot name {name!r} is not 1 to 64 letters, digits and '._:+-' starting with a "
                            f"letter or digit")
    return name


@dataclass(frozen=True, slots=True)
class SnapshotId:
    """A snapshot: its name, when it was taken (seconds since the epoch),
    and the position of the stream it marks — the replica's state after
    applying seq ``seq`` of generation ``generation`` (hex)."""

    name: str
    generation: str
    seq: int
    created: float
    auto: bool = False  # taken by fsrep when the group left InSync: exists on this side only

    def __str__(self) -> str:
        return f"snapshot {self.name} at seq {self.seq} of generation {self.generation[:8]}"

    def to_payload(self) -> dict[str, Any]:
        return {"name": self.name, "generation": self.generation, "seq": self.seq, "created": self.created,
                "auto": self.auto}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> SnapshotId:
        return cls(str(payload["name"]), str(payload["generation"]), int(payload["seq"]),
                   float(payload["created"]), bool(payload.get("auto", False)))


class Changes(Protocol):
    """What a delta of a chain is."""

    def merge(self, other: Self) -> None: ...
    def to_payload(self) -> dict[str, Any]: ...
    def __bool__(self) -> bool: ...


C = TypeVar("C", bound=Changes)


@dataclass(slots=True)
class _Entry(Generic[C]):
    id: SnapshotId
    delta: C
    intercept: DirtySet | None = None


class SnapshotChain(Generic[C]):
    """The snapshots of one group on one side, oldest first."""

    def __init__(self, make: Callable[[], C]) -> None:
        self._make = make
        self._entries: list[_Entry[C]] = []
        self.changed = False  # something to save since the last save

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[SnapshotId]:
        return iter([entry.id for entry in self._entries])

    @property
    def newest(self) -> SnapshotId | None:
        return self._entries[-1].id if self._entries else None

    def find(self, name: str) -> SnapshotId | None:
        entry = self._find(name)
        return entry.id if entry is not None else None

    def _find(self, name: str) -> _Entry[C] | None:
        return next((entry for entry in self._entries if entry.id.name == name), None)

    def _get(self, name: str) -> _Entry[C]:
        """Raises SnapshotError when there is no snapshot *name*."""
        entry = self._find(name)
        if entry is None:
            raise SnapshotError(f"no snapshot named {name}")
        return entry

    def current(self) -> C | None:
        """Where changes made now go: the newest snapshot's delta (None
        without a snapshot: nothing to record)."""
        if not self._entries:
            return None
        self.changed = True
        return self._entries[-1].delta

    def add(self, sid: SnapshotId, *, intercept: DirtySet | None = None, changes: C | None = None) -> None:
        """Make *sid* the newest snapshot; its delta starts as *changes*
        (what is already known to differ from it), else empty. Automatic
        points older than it are retired: it is a newer common point.

        Raises:
            SnapshotError: the name is taken, or the chain is full.
        """
        if self._find(sid.name) is not None:
            raise SnapshotError(f"a snapshot named {sid.name} exists already; choose another name or delete it")
        for entry in [e for e in self._entries if e.id.auto]:
            self.retire(entry.id.name)
        if len(self._entries) >= MAX_SNAPSHOTS:
            raise SnapshotError(f"the group holds {MAX_SNAPSHOTS} snapshots already; delete one first")
        self._entries.append(_Entry(sid, changes if changes is not None else self._make(), intercept))
        self.changed = True

    def retire(self, name: str) -> SnapshotId:
        """Forget snapshot *name*; what changed since it stays recorded for
        the snapshot before it.

        Raises:
            SnapshotError: there is none of that name.
        """
        entry = self._get(name)
        index = self._entries.index(entry)
        if index:
            self._entries[index - 1].delta.merge(entry.delta)
            before = self._entries[index - 1]
            if entry.intercept is not None:  # the older one's changes now span this one's taking
                if before.intercept is None:
                    before.intercept = DirtySet()
                before.intercept.merge(entry.intercept)
        del self._entries[index]
        self.changed = True
        return entry.id

    def since(self, name: str) -> C:
        """What changed on this side since snapshot *name* (a new object).

        Raises:
            SnapshotError: there is none of that name.
        """
        entry = self._get(name)
        union = self._make()
        for later in self._entries[self._entries.index(entry):]:
            union.merge(later.delta)
        return union

    def delta(self, name: str) -> C:
        """Snapshot *name*'s own delta (the changes until the next one).

        Raises:
            SnapshotError: there is none of that name.
        """
        return self._get(name).delta

    def deltas(self, name: str) -> list[C]:
        """The deltas whose union is ``since(name)`` (none for an unknown
        name): for a cheap upper bound of its size."""
        entry = self._find(name)
        return [] if entry is None else [e.delta for e in self._entries[self._entries.index(entry):]]

    def intercept(self, name: str) -> DirtySet | None:
        entry = self._find(name)
        return entry.intercept if entry is not None else None

    def rekey(self: SnapshotChain[DirtySet], inodes: Mapping[int, int]) -> None:
        """Give every inode its number on another file system
        (``DirtySet.rekeyed``), after a move: saved whole next time."""
        for entry in self._entries:
            entry.delta = entry.delta.rekeyed(inodes)
            if entry.intercept is not None:
                entry.intercept = entry.intercept.rekeyed(inodes)
        self.changed = True

    # --- persistence -------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        self.changed = False
        return {"snapshots": [{"id": entry.id.to_payload(), "delta": entry.delta.to_payload(),
                               "intercept": entry.intercept.to_payload() if entry.intercept is not None else None}
                              for entry in self._entries]}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], make: Callable[[], C],
                     load: Callable[[dict[str, Any]], C]) -> SnapshotChain[C]:
        """Rebuild from ``to_payload``.

        Raises:
            ValueError: the payload is not a chain.
        """
        chain = cls(make)
        try:
            for item in payload["snapshots"]:
                intercept = item.get("intercept")
                chain._entries.append(_Entry(SnapshotId.from_payload(item["id"]), load(item["delta"]),
                                             DirtySet.from_payload(intercept) if intercept is not None else None))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a snapshot chain: {exc!r}") from None
        return chain


# --- changes by path (the secondary's) ------------------------------------------------

META, DIR, WHOLE = 1, 2, 4  # flags of a PathChange


@dataclass(frozen=True, slots=True)
class PathChange:
    """What changed at one path: data regions, metadata (``META``), the
    entries of a directory (``DIR``), or everything of the entry
    (``WHOLE``: it was replaced or moved here)."""

    path: bytes
    flags: int
    runs: tuple[RegionRange, ...] = ()


@dataclass(slots=True, eq=False)
class _Node:
    children: dict[bytes, _Node] = field(default_factory=dict)
    regions: RegionSet | None = None
    flags: int = 0

    @property
    def marked(self) -> bool:
        return bool(self.flags or self.regions)

    def merge(self, other: _Node) -> None:
        """Fold a copy of *other* (and its subtree) into this node, without
        recursion: nothing is shared, so changing one later leaves the
        other as it was."""
        stack = [(self, other)]
        while stack:
            mine, theirs = stack.pop()
            mine.flags |= theirs.flags
            if theirs.regions:
                if mine.regions is None:
                    mine.regions = RegionSet()
                mine.regions.update(theirs.regions)
            for name, child in theirs.children.items():
                existing = mine.children.get(name)
                if existing is None:
                    existing = mine.children[name] = _Node()
                stack.append((existing, child))


class PathChanges:
    """Changes keyed by path, as a trie of path components."""

    def __init__(self) -> None:
        self._root = _Node()
        self._tee: PathChanges | None = None

    def __bool__(self) -> bool:
        return self._root.marked or bool(self._root.children)

    def tee(self, into: PathChanges | None) -> None:
        """Mark in *into* too everything marked here from now on (None:
        stop): what a save has not written yet, while this record goes on
        whole. A move brings *into* the whole record that arrived at the
        new path, so an older copy of this record merged with *into* holds
        at least what this one does."""
        self._tee = into

    def _node(self, path: bytes) -> _Node:
        node = self._root
        if path:
            for part in path.split(b"/"):
                node = node.children.setdefault(part, _Node())
        return node

    def mark_regions(self, path: bytes, regions: RegionRange) -> None:
        if regions.count:
            node = self._node(path)
            if node.regions is None:
                node.regions = RegionSet()
            node.regions.add(regions)
            if self._tee is not None:
                self._tee.mark_regions(path, regions)

    def mark(self, path: bytes, flags: int) -> None:
        self._node(path).flags |= flags
        if self._tee is not None:
            self._tee.mark(path, flags)

    def mark_entry(self, path: bytes, flags: int = 0) -> None:
        """An entry made, removed or replaced at *path*: its directory's
        entries, plus *flags* of the entry itself."""
        self.mark(path.rpartition(b"/")[0], DIR)
        if flags:
            self.mark(path, flags)

    def move(self, old: bytes, new: bytes) -> None:
        """Entry *old* became *new* (a rename): its record moves with it,
        and what arrives at *new* replaces what was there."""
        self.mark_entry(old)
        self.mark_entry(new, WHOLE)
        moved = self._detach(old)
        if moved is None:
            return
        if self._tee is not None:  # it may hold only part of what moved: it gets all of it
            self._tee._detach(old)
            self._tee._node(new).merge(moved)
        self._node(new).merge(moved)

    def _detach(self, path: bytes) -> _Node | None:
        """Take the record of *path* (and below) out of the trie; None if
        there is none (or *path* is the root, which cannot move)."""
        if not path:
            return None
        parent = self._root
        parts = path.split(b"/")
        for part in parts[:-1]:
            found = parent.children.get(part)
            if found is None:
                return None
            parent = found
        return parent.children.pop(parts[-1], None)

    def merge(self, other: PathChanges) -> None:
        self._root.merge(other._root)

    def walk(self, after: bytes = b"") -> Iterator[PathChange]:
        """Every marked path in order of its components, from the start
        (*after* ``b""``) or strictly after path *after*."""
        cut = after.split(b"/") if after else []
        if not cut and self._root.marked:
            yield self._change(b"", self._root)
        # Each level: (its path, its children's names in order, index of the next, whether it lies on *cut*).
        stack: list[tuple[bytes, _Node, list[bytes], int, bool]] = [
            (b"", self._root, sorted(self._root.children), 0, bool(cut))]
        while stack:
            path, node, names, index, on_cut = stack.pop()
            if index >= len(names):
                continue
            name = names[index]
            stack.append((path, node, names, index + 1, on_cut))
            depth = len(stack) - 1
            child = node.children[name]
            child_path = path + b"/" + name if path else name
            if on_cut:
                if name < cut[depth]:
                    continue
                if name == cut[depth]:  # *cut* itself or above it: not after it, but what lies below may be
                    stack.append((child_path, child, sorted(child.children), 0, depth < len(cut) - 1))
                    continue
            if child.marked:
                yield self._change(child_path, child)
            stack.append((child_path, child, sorted(child.children), 0, False))

    @staticmethod
    def _change(path: bytes, node: _Node) -> PathChange:
        runs = tuple(node.regions.ranges()) if node.regions else ()
        if len(runs) > MAX_RUNS_PER_CHANGE:
            return PathChange(path, node.flags | WHOLE)
        return PathChange(path, node.flags, runs)

    def to_payload(self) -> dict[str, Any]:
        return {"paths": [[c.path.hex(), c.flags, [[r.first, r.count] for r in c.runs]] for c in self.walk()]}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PathChanges:
        """Raises ValueError when *payload* is not one."""
        changes = cls()
        try:
            for path, flags, runs in payload["paths"]:
                path = bytes.fromhex(path)
                changes.mark(path, int(flags) & (META | DIR | WHOLE))
                for first, count in runs:
                    changes.mark_regions(path, RegionRange(int(first), int(count)))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a set of changes by path: {exc!r}") from None
        return changes


# --- taking one (the primary's steps) ----------------------------------------------------


class Taking:
    """The primary's steps of taking snapshot *name*, none of which holds a
    client's change:

    1. ``Taking(...)``: the intercept log opens; every change recorded from
       now on (``record``) is in it. ``first_drain`` is the last seq sent
       before it opened: wait until that is acknowledged.
    2. ``replica_at(seq)``: the Snapshot frame goes out as seq *seq*; the
       replica takes its snapshot there. Wait until *seq* is acknowledged.
    3. ``commit``: the primary's snapshot, at the position of the
       replica's, with the intercept log closed into it.

    What the two snapshots may differ by is what the intercept log holds:
    the changes applied here after step 1 but before step 3 — among them
    every change between the replica's position and this side's state when
    it took its own.
    """

    def __init__(self, name: str, created: float, last_sent_seq: int) -> None:
        self.name = check_name(name)
        self.created = created
        self.first_drain = last_sent_seq
        self.intercept = DirtySet()
        self.seq: int | None = None  # the replica's position, once its frame is sent

    def record(self, marks: Marks) -> None:
        self.intercept.apply(marks)

    def replica_at(self, seq: int) -> None:
        self.seq = seq

    def commit(self, chain: SnapshotChain[DirtySet], generation: str) -> SnapshotId:
        """Add the snapshot to *chain*, at the replica's position in
        *generation*.

        Raises:
            SnapshotError: the replica's frame was never sent, or the chain
                refuses it (see ``SnapshotChain.add``).
        """
        if self.seq is None:
            raise SnapshotError(f"snapshot {self.name}: the replica never took its side")
        sid = SnapshotId(self.name, generation, self.seq, self.created)
        chain.add(sid, intercept=self.intercept)
        return sid


def by_path(dirty: DirtySet, files_in: Callable[[bytes], list[bytes]]) -> PathChanges | None:
    """*dirty* (the primary's record, by inode) as the replica's record (by
    path): what an old primary changed since a snapshot, kept by path when
    its store becomes a replica (``fsrep demote``), so the promoted side
    can ask for it. None when it cannot be told by path — the set says
    "everything", or names a file it never saw by name — and a resync must
    compare the whole tree instead.

    A directory whose files' heads may differ (after a crash, the activity
    log's coarse record) marks the first extent and metadata of each file
    *files_in* lists there (its names, read from the store).
    """
    if dirty.everything:
        return None
    changes = PathChanges()
    for ino in dirty.files():
        path = dirty.hint(ino)
        if path is None or path == UNNAMED:
            return None
        for run in dirty.ranges(ino):
            changes.mark_regions(path, run)
        if dirty.meta_dirty(ino):
            changes.mark(path, META)
    for ino in dirty.dirs():
        path = dirty.hint(ino)
        if path is None or path == UNNAMED:
            return None
        changes.mark(path, DIR)
        if dirty.heads_dirty(ino):
            for name in files_in(path):
                child = path + b"/" + name if path else name
                changes.mark_regions(child, regions_for(0, EXTENT_SIZE))
                changes.mark(child, META)
    return changes
