"""A replica's pseudo snapshots: the frames that take and retire them, the
answer to what changed since one, and how the chain is saved with the
replica's position and loaded back.

How this works: each replica keeps a ``tracking.SnapshotChain`` of
``PathChanges`` (changes by path, as frames name them), oldest first. A
Snapshot frame adds one at its place in the stream, with an empty delta;
from then on every mutation applied marks the newest delta
(``_apply``'s ``marks`` column). A SnapshotChanges question is answered
from the union of the deltas since the snapshot asked about, a page at a
time, in path order: the primary asks again after the last path of a page
while ``more`` is 1.

Durability: the chain is saved by the replica's checkpoint after the
data is synced and before the position file, which lists the snapshots
the chain held at that save (``listed``). A save costs what was marked
since the one before (``SavedChain``): the newest delta tees its marks
into a second record, which the checkpoint appends to a journal
(``tracking.JournaledState``); the chain is written whole only when its
snapshots changed (taken, retired, dropped at load), after a save that
was not written, or when the journal outgrew the base. On load only the
snapshots the position lists, at or below its seq, are kept
(``SavedChain.load``): one the position never reached was lost with a
crash, and the primary takes it again or falls back to an older one. Its
record of changes is then at least everything applied up to the
position; what is applied after it is sent again and marked again.

Memory: a long-lived snapshot costs one trie node per changed path (the
path's components, shared with its neighbours) and, per file written, a
roaring ``RegionSet`` of its changed 4 KiB regions — a few bytes per run
of regions, so a million scattered regions cost megabytes. A chain holds
at most ``tracking.MAX_SNAPSHOTS``; retiring a snapshot folds its delta
into the one before it, and retiring the oldest frees its record.

Cost of an answer: the union of the deltas since the snapshot asked
about is gathered once, at its first page, and kept for the pages after
it (the newest snapshot's delta is read in place, with no copy); each
page then walks to its start along its path (sorting the names of each
directory on the way) and yields at most ``PAGE_BYTES``. So an answer
costs the size of the record once, plus its pages.

Caveats:
- Writing the chain whole (a snapshot taken or retired, a journal grown
  past the base) costs the size of the record: about 17 us a changed
  path to capture, in the event loop, and as much again to write, in a
  worker thread.
- A record merged over the base keeps what a rename moved at its old
  path as well as at its new one until the next whole write: more than
  changed, never less.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tracking
import transport as tp

from . import _divergent_copy as divergent_copy

if TYPE_CHECKING:
    from ._apply import Target

log = logging.getLogger(__name__)

Chain = tracking.SnapshotChain[tracking.PathChanges]
# A page of Changes stops once it holds this much (it always holds one path). A quarter of what a frame may
# carry: a page costs about 30 us a path to build (7,000 paths, 0.2 s here), all of it in the event loop.
PAGE_BYTES = tp.MAX_CHANGES // 4
NO_GENERATION = "00" * 16  # the generation a snapshot records on a replica that has none yet


def new_chain() -> Chain:
    return tracking.SnapshotChain(tracking.PathChanges)


def listed(chain: Chain) -> list[list[Any]]:
    """The [name, seq] of each snapshot of *chain*, as the position file lists them."""
    return [[sid.name, sid.seq] for sid in chain]


# --- the frames ---------------------------------------------------------------------


def take(replica: Target, op: tp.Snapshot) -> None:
    """Snapshot *op* at its seq: a new, empty record of changes. A name
    the replica holds already keeps the snapshot it names (a warning: the
    primary asked for it twice); a full chain retires its oldest first."""
    chain = replica.snapshots
    held = chain.find(op.name)
    if held is not None:
        log.warning("group %s: a snapshot named %s exists already (%s); keeping it and ignoring the one at seq %d",
                    replica.id, op.name, held, op.seq)
        return
    if len(chain) >= tracking.MAX_SNAPSHOTS:
        oldest = next(iter(chain))
        chain.retire(oldest.name)
        log.info("group %s: the replica holds %d snapshots; retired the oldest, %s", replica.id,
                 tracking.MAX_SNAPSHOTS, oldest)
    generation = replica.generations[-1].hex() if replica.generations else NO_GENERATION
    sid = tracking.SnapshotId(op.name, generation, op.seq, float(op.created))
    chain.add(sid)
    log.info("group %s: took %s", replica.id, sid)


def retire(replica: Target, op: tp.RetireSnapshot) -> None:
    """Forget snapshot *op.name*; one the replica does not hold is no error
    (it was dropped here, or retired twice)."""
    if replica.snapshots.find(op.name) is None:
        log.debug("group %s: no snapshot named %s to retire", replica.id, op.name)
        return
    log.info("group %s: retired %s", replica.id, replica.snapshots.retire(op.name))


def changes_since(replica: Target, op: tp.SnapshotChanges) -> tp.Changes:
    """One page of what changed on the replica since snapshot *op.name*:
    the paths after *op.after* (from the first unless *op.started*), in
    order; ``found`` 0 when the replica holds no such snapshot."""
    chain = replica.snapshots
    if chain.find(op.name) is None:
        replica.answering = None
        return tp.Changes(seq=op.seq, found=0, more=0, entries=b"")
    page: list[bytes] = []
    size, more = 0, 0
    for change in _after(_union(replica, op), op.after if op.started else None):
        if size >= PAGE_BYTES:
            more = 1
            break
        encoded = tp.encode_changes([(change.path, change.flags, [(r.first, r.count) for r in change.runs])])
        page.append(encoded)
        size += len(encoded)
    if not more:
        replica.answering = None
    return tp.Changes(seq=op.seq, found=1, more=more, entries=b"".join(page))


def keep_divergent(replica: Target, op: tp.KeepDivergent) -> tp.Kept:
    """Copy what changed on the replica since snapshot *op.name* out of it
    (``_divergent_copy``), before a resync gives up the replica's side of
    a split brain; ``found`` 0 when the replica holds no such snapshot."""
    if replica.snapshots.find(op.name) is None:
        return tp.Kept(seq=op.seq, found=0, entries=0, data=0, where="")
    into = replica.divergent_dir()
    entries, data = divergent_copy.keep(replica.tree, replica.snapshots.since(op.name), into)
    log.warning("group %s: the replica's side of a split brain is given up: %d entries (%d bytes of data) that "
                "changed here since snapshot %s are kept in %s", replica.id, entries, data, op.name, into)
    return tp.Kept(seq=op.seq, found=1, entries=entries, data=data, where=str(into))


def _union(replica: Target, op: tp.SnapshotChanges) -> tracking.PathChanges:
    """What changed since snapshot *op.name*, made once per answer: a
    record of many paths costs its size to gather, not that for each page.
    The newest snapshot's is its own delta, read in place. (What the later
    pages then miss, frames applied between them, came from the primary,
    which knows it.)"""
    held = replica.answering
    if op.started and held is not None and held[0] == op.name:
        return held[1]
    chain = replica.snapshots
    deltas = chain.deltas(op.name)
    union = deltas[0] if len(deltas) == 1 else chain.since(op.name)
    replica.answering = (op.name, union)
    return union


def _after(changes: tracking.PathChanges, after: bytes | None) -> Iterator[tracking.PathChange]:
    """The changes strictly after path *after*; all of them for None.
    (``walk(b"")`` starts at the root itself, so a page that ended with
    the root goes on with the paths below it.)"""
    if after is None:
        return changes.walk()
    if after:
        return changes.walk(after)
    return (change for change in changes.walk() if change.path)


# --- saved with the position --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capture:
    """What one save of a chain writes: the chain whole (``whole``: a new
    base), or a record of what was marked in its newest delta since the
    capture before (``number - 1``)."""

    number: int
    whole: bool
    payload: dict[str, Any]


class SavedChain:
    """A replica's chain on disk (``tracking.JournaledState``), and what
    the next save must write of it.

    A capture (between two frames, in the event loop) takes what the
    newest delta's tee collected since the capture before, and gives the
    delta a new one: the record's size is what was marked meanwhile, not
    the size of the delta. The chain is captured whole instead when its
    snapshots are not those the file holds (taken, retired, dropped at
    load, or unknown after a save that was not written) or when the
    journal outgrew the base.

    Writes (``write``, in a worker thread) come in the order of the
    captures (the caller holds one in flight at a time): each record holds
    only what was marked since the capture before, so a capture made while
    the one before is not written (failed, skipped, in flight) is whole.
    Never a record after a failed append either: what it left at the
    journal's end would end the journal there on load, and every record
    after it with it.
    """

    def __init__(self, path: Path) -> None:
        self.file = tracking.JournaledState(path, tracking.SNAPSHOTS_KIND)
        self._shape: list[tracking.SnapshotId] | None = None  # the snapshots the file holds; None: unknown
        self._teed: tracking.PathChanges | None = None  # the delta whose marks go to _unsaved too
        self._unsaved = tracking.PathChanges()
        self._captured = self._written = 0  # the number of the last capture, and of the last written

    @property
    def path(self) -> Path:
        return self.file.path

    def capture(self, chain: Chain) -> Capture | None:
        """What the next save of *chain* writes; None when the file holds
        it already (or it holds no snapshot and never did)."""
        current = self._shape is not None and self._written == self._captured
        if not chain.changed and (current or not chain):
            return None
        unsaved, newest, shape = self._retee(chain), chain.newest, list(chain)
        whole = not current or newest is None or shape != self._shape or \
            self.file.outgrown
        self._shape = shape
        if whole:
            self._captured += 1
            return Capture(self._captured, True, chain.to_payload())
        chain.changed = False
        if not unsaved:
            return None
        assert newest is not None
        self._captured += 1
        return Capture(self._captured, False, {"snapshot": newest.name, "changes": unsaved.to_payload()})

    def _retee(self, chain: Chain) -> tracking.PathChanges:
        """Start collecting anew what is marked in *chain*'s newest delta;
        what was collected until now."""
        unsaved, self._unsaved = self._unsaved, tracking.PathChanges()
        if self._teed is not None:
            self._teed.tee(None)
        newest = chain.newest
        self._teed = chain.delta(newest.name) if newest is not None else None
        if self._teed is not None:
            self._teed.tee(self._unsaved)
        return unsaved

    def write(self, capture: Capture) -> None:
        """Durably write *capture*.

        Raises:
            OSError: it was not written (the next capture is whole).
        """
        if capture.whole:
            self.file.rewrite(capture.payload)
        else:
            self.file.append(capture.payload)
        self._written = capture.number

    def empty(self) -> Chain:
        """A new, empty chain, written as this file's base (the journal
        emptied): a replica that starts again from nothing."""
        chain = new_chain()
        self.file.rewrite(chain.to_payload())
        self._shape = list(chain)
        self._retee(chain)  # nothing of a chain loaded before
        return chain

    def rewrite(self, chain: Chain) -> None:
        """Write *chain* whole as this file's base (the journal emptied):
        the chain of a replica made from an old primary's store."""
        self.file.rewrite(chain.to_payload())
        self._shape = list(chain)
        self._retee(chain)

    def load(self, names: list[Any], last_seq: int, group: str) -> Chain:
        """The chain of the file (its base, then each journal record merged
        into the delta it names), holding only the snapshots the position
        file lists (*names*: [name, seq] each) at or below *last_seq*. A
        missing or corrupt base, or a record naming no snapshot, while it
        lists some drops them all, with one warning: never a refused
        session, never an empty record that claims a snapshot.

        A damaged record ends the journal without a word
        (``JournaledState``), and that loses nothing the position relies
        on: a checkpoint appends its record (one fdatasync) before it
        writes the position file, so the only record a crash can tear is
        one whose position was never written."""
        wanted = {(str(name), int(seq)) for name, seq in names if int(seq) <= last_seq}
        if not wanted:
            return new_chain()
        try:
            base, records = self.file.load()
            chain = tracking.SnapshotChain.from_payload(base, tracking.PathChanges, tracking.PathChanges.from_payload)
            for record in records:
                chain.delta(str(record["snapshot"])).merge(tracking.PathChanges.from_payload(record["changes"]))
        except (tracking.StateError, ValueError, KeyError, TypeError) as exc:
            _dropped(group, self.path, exc, sorted(name for name, _ in wanted))
            chain = new_chain()
            chain.changed = True  # written again at the next checkpoint
            return chain
        self._shape = list(chain)
        for sid in list(chain):
            if (sid.name, sid.seq) not in wanted:
                chain.retire(sid.name)  # its changes stay recorded for the one before it
        self._retee(chain)  # what is marked from now on is the next record
        missing = sorted(name for name, seq in wanted if chain.find(name) is None)
        if missing:
            _dropped(group, self.path, "it does not hold them", missing)
        return chain


def _dropped(group: str, path: Path, why: object, names: list[str]) -> None:
    log.warning("group %s: cannot load the replica's snapshots from %s (%s); dropping %s: the primary falls back "
                "to an older common point or a checksum resync", group, path, why, ", ".join(names))
