"""The resync stream of one group: frames a resync sends on the current
session (nothing applied locally), the questions it asks the replica
(listings, digests, data maps) and their replies, the gate that holds
clients' mutations while a full resync runs, and the end of a run, when
the replica is current again.

The resync code (``_resync.py``, ``_fullsync.py``) talks to the group only
through this object.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import trio

import tracking
import transport as tp

from ._config import GroupRecord
from ._pipeline import NO_MARKS
from ._state import RelationshipState

if TYPE_CHECKING:
    from ._clone_backups import CloneBackups
    from ._snapshots import Snapshots
    from ._splitter import Pending, Relationship

log = logging.getLogger(__name__)
R = RelationshipState


class ResyncStream:
    """What a resync run may do to its group."""

    def __init__(self, rel: Relationship) -> None:
        self._rel = rel
        self._replies: dict[int, tuple[trio.Event, list[tp.Frame]]] = {}
        self._gate: trio.Event | None = None
        self.bytes_sent = 0  # over every run of this mount
        self.last_seconds = 0.0  # how long the last run took
        # Regular files whose dirty regions are compared by digest before any is copied (inode -> path): clones
        # replayed as clones, paths an operator named (--path). Kept across the runs of this mount.
        self.to_compare: dict[int, bytes] = {}

    @property
    def record(self) -> GroupRecord:
        return self._rel.record

    @property
    def dirty(self) -> tracking.DirtySet:
        return self._rel.ledger.dirty

    def mark_stale(self, reason: str) -> None:
        self._rel.mark_stale(reason)

    def mark_everything_dirty(self, reason: str) -> None:
        self._rel.mark_everything_dirty(reason)

    def leave_sync(self, reason: str) -> None:
        """Clients' changes stay local and dirty from now on (see
        ``Relationship.leave_sync``)."""
        self._rel.leave_sync(reason)

    def save_dirty(self) -> None:
        """Save the dirty set now: marks made outside the write path."""
        self._rel.ledger.dirty_changed = True
        self._rel.ledger.save_dirty()

    def replica_matches(self) -> None:
        """A full resync copied everything while clients were held: start
        over from a clean dirty set."""
        self._rel.ledger.replace_dirty(tracking.DirtySet())

    def ran(self, nbytes: int, seconds: float) -> None:
        """A run sent *nbytes* of data in *seconds* (for status)."""
        self.bytes_sent += nbytes
        self.last_seconds = seconds

    # --- the gate ----------------------------------------------------------------

    @contextlib.contextmanager
    def holding_mutations(self) -> Iterator[None]:
        """New mutations wait (in ``admit``) while this is open."""
        self._gate = trio.Event()
        try:
            yield
        finally:
            self._gate.set()
            self._gate = None

    async def admit(self) -> None:
        """Wait while a resync holds mutations. Does not checkpoint when no
        resync runs, so a caller's split() follows without a gap."""
        while self._gate is not None:
            await self._gate.wait()

    # --- frames and questions ----------------------------------------------------------

    def begin_resync(self, why: str) -> None:
        """Start sending a resync stream on the current connection.

        Raises:
            LinkDown: there is none.
        """
        rel = self._rel
        if rel.link.conn is None:
            raise tp.LinkDown("not connected")
        rel.sessions.resume()
        # Before any change of the run: the replica keeps what the resync overwrites, to roll back to here.
        rel.queue(rel.link.conn, tp.ResyncBegin(seq=rel.pipeline.next_seq))
        quiet = rel.scheduler.run is not None and rel.scheduler.run.routine
        if rel.state is R.IN_SYNC:
            rel.set_state(R.OUT_OF_SYNC, why, quiet=quiet)  # one step with the next: writes never see OutOfSync
        rel.set_state(R.RESYNCING, why, quiet=quiet)

    @property
    def clone_backups(self) -> CloneBackups | None:
        return self._rel.clone_backups

    @property
    def snapshots(self) -> Snapshots:
        return self._rel.snapshots

    def divergent_dir(self) -> Path:
        """Where a new copy of this side of a split brain goes: the store's
        ``.fsrep/divergent/<id>/<time>/`` (as the secondary's)."""
        return (self._rel.ledger.groups.dir.parent / "divergent" / self.record.id /
                time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))

    def retracked(self) -> None:
        """The run replaced what the dirty set says (from a snapshot): save it."""
        self._rel.ledger.dirty_changed = True

    def prepare(self) -> None:
        """Before a run's first question, asked while clients' changes
        still stay local (``early``): continue the stream at the replica's
        position."""
        if self._rel.link.conn is None:
            raise tp.LinkDown("not connected")
        self._rel.sessions.resume()

    def send(self, make: Callable[[int], tp.Operation], marks: tracking.Marks = NO_MARKS, *,
             early: bool = False) -> Pending:
        """Queue a resync frame (nothing applied locally). Never checkpoints.
        *early*: a question asked before the run begins (after ``prepare``),
        while the group is still InSync or OutOfSync.

        *marks* say what becomes dirty again should the frame not reach the
        replica: the link is lost before its ack, the secondary crashes
        before making it durable, or this daemon crashes (the saved dirty
        set keeps them until the secondary reports them durable).

        Raises:
            LinkDown: the link was lost; the group is OutOfSync again.
        """
        rel = self._rel
        conn = rel.link.conn
        if conn is None or not (rel.state is R.RESYNCING or
                                early and rel.state in (R.IN_SYNC, R.OUT_OF_SYNC, R.SPLIT_BRAIN)):
            raise tp.LinkDown(f"resync interrupted: {rel.link.last_error or 'link lost'}")
        run = rel.scheduler.run
        if run is not None:
            run.progressed(trio.current_time())
        rel.ledger.dirty_changed = True  # what it cleans stays in the saved dirty set until durable there
        return rel.queue(conn, make(rel.pipeline.next_seq), marks)

    def ask(self, make: Callable[[int], tp.Operation], marks: tracking.Marks = NO_MARKS, *,
            early: bool = False) -> Callable[[], Awaitable[tp.Frame]]:
        """Queue a resync question (ListDir, Checksum) now — in the caller's
        step — and return what awaits its reply (*early*, *marks*: see
        ``send``; marks cleaned in this step until the answer says).

        Raises:
            LinkDown: the link was lost (now or before the reply came).
        """
        event = trio.Event()
        replies: list[tp.Frame] = []
        seq = self.send(make, marks, early=early).seq
        self._replies[seq] = (event, replies)

        async def reply() -> tp.Frame:
            try:
                await event.wait()
            finally:
                self._replies.pop(seq, None)
            if not replies:
                raise tp.LinkDown(f"resync interrupted: {self._rel.link.last_error or 'no reply from the secondary'}")
            return replies[0]

        return reply

    def ask_listing(self, path: bytes, *, early: bool = False) -> Callable[[], Awaitable[dict[bytes, tp.DirEntry]]]:
        """Ask for the replica's entries of directory *path* at this point
        of the operation stream — now, in the caller's step — and return
        what awaits them (all pages). Several directories can be asked at
        once: one round trip for all of them. *early*: see ``send``.

        Raises:
            LinkDown: the link was lost (now or before the reply came).
        """
        first = self.ask(lambda seq: tp.ListDir(seq=seq, path=path, after=b""), early=early)

        async def entries() -> dict[bytes, tp.DirEntry]:
            found: dict[bytes, tp.DirEntry] = {}
            reply = first
            while True:
                listing = await reply()
                assert isinstance(listing, tp.Listing)
                last = b""
                for entry in listing.items():
                    found[entry.name] = entry
                    last = max(last, entry.name)
                if not listing.more or not last:
                    return found
                reply = self.ask(lambda seq, after=last: tp.ListDir(seq=seq, path=path, after=after), early=early)

        return entries

    def replied(self, event: tp.Frame) -> None:
        """A reply (Listing, Digests, DataMap) to the question sent as
        ``event.seq``."""
        slot = self._replies.get(event.seq)
        if slot is not None:
            slot[1].append(event)
            slot[0].set()

    def acked(self, seq: int) -> None:
        """Questions acknowledged without their reply are answered by
        LinkDown rather than left waiting forever."""
        for asked, (event, _) in self._replies.items():
            if asked <= seq:
                event.set()

    def fail_questions(self) -> None:
        for event, _ in self._replies.values():
            event.set()
        self._replies.clear()

    # --- waiting -----------------------------------------------------------------------

    async def throttle(self, max_bytes: int) -> None:
        """Wait until at most *max_bytes* of file data are in flight."""
        pipeline = self._rel.pipeline
        while pipeline.bytes_in_flight > max_bytes and pipeline.first is not None:
            await self._rel.pending(pipeline.first).done.wait()

    async def all_acked(self) -> None:
        """Wait until everything sent so far is acknowledged (not what
        clients send meanwhile: under semi-sync that may never pause).

        Raises:
            LinkDown: the link was lost first.
        """
        if not await self._rel.drained(self._rel.pipeline.drain()):
            raise tp.LinkDown(f"resync interrupted: {self._rel.link.last_error}")

    async def finish_resync(self) -> bool:
        """Wait for every resync frame's ack; then, if nothing became dirty
        meanwhile, the replica is current: clear the stale mark durably and
        go InSync (the check and the switch are one step).

        Returns:
            False when more became dirty: run another pass.
        Raises:
            LinkDown: the link was lost before everything was acknowledged.
        """
        await self.all_acked()
        rel = self._rel
        if rel.state is not R.RESYNCING:
            raise tp.LinkDown(f"resync interrupted: {rel.link.last_error}")
        if rel.ledger.dirty:
            return False
        rel.ledger.dirty_changed = True
        if not rel.ledger.save_dirty():
            raise tp.LinkDown("cannot save the dirty set; the resync is retried with the next session")
        try:
            generation = rel.ledger.replica_matches(rel.pipeline.acked_seq)
        except OSError as exc:
            raise tp.LinkDown(f"cannot record that the replica is in sync ({exc}); the resync is retried with "
                              f"the next session") from None
        rel.lag_since = None
        self.to_compare.clear()  # nothing is dirty: each was compared, or copied instead
        rel.set_state(R.IN_SYNC, "resync complete", quiet=rel.scheduler.run is not None and rel.scheduler.run.routine)
        assert rel.link.conn is not None
        rel.sessions.tell_generation(rel.link.conn, generation)
        return True
