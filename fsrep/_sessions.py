"""What each session of the link means for its group (the link's owner):
the handshake verdict applied, the frames the secondary sends (acks,
durable reports, replies, refusals), the ack watchdog's question, and the
generation the replica is told.

The rules of the verdict are ``_verdict.decide``'s; this module only
carries them out — a new row there is, at most, a new branch here.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

import trio

import tracking
import transport as tp

from . import _divergence as divergence
from ._pipeline import Position
from ._state import RelationshipState
from ._verdict import Decision, Known, Reported, decide

if TYPE_CHECKING:
    from ._splitter import Relationship

log = logging.getLogger(__name__)
R = RelationshipState


class Sessions:
    """The link's view of one relationship."""

    def __init__(self, rel: Relationship) -> None:
        self._rel = rel
        self.replica_seq = 0  # where the replica said it was, at the last handshake
        self._from_replica = False  # the next resync starts at the replica's position
        self._tell_generation = False

    def connected(self, conn: tp.Connection, welcome: tp.Welcome) -> None:
        """Judge the replica just connected to; the group is InSync, or
        OutOfSync (connected) when the replica needs a resync, or
        SplitBrain when it must not be resynced."""
        rel, record, pipeline = self._rel, self._rel.record, self._rel.pipeline
        replica = Reported(welcome.last_seq, bool(welcome.fresh), tracking.generations.unpack(welcome.generations))
        theirs = Position(replica.generations[-1].hex() if replica.generations else "none", replica.last_seq)
        log.info("group %s: connected to %s%s and authenticated; replica at %s, primary at %s",
                 record.id, record.secondary, f" over {conn.tls_version}" if conn.tls_version else "",
                 theirs, rel.position)
        self.replica_seq = welcome.last_seq
        queued = rel.scheduler.queued
        rel.snapshots.reported(welcome, replica.generations)
        basis = rel.snapshots.basis()
        known = Known(record.generation_ids, pipeline.acked_seq, pipeline.durable_seq, pipeline.next_seq,
                      record.stale, rel.replica_may_be_ahead, queued is not None and queued.mode == "full",
                      basis.name if basis is not None else "",
                      bytes.fromhex(record.promoted_from) if record.promoted_from else b"")
        verdict = decide(known, replica)
        self._tell_generation = verdict.tell_generation
        if verdict.decision.refused:
            self._refuse(verdict.reason)
            return
        if verdict.lost_after is not None:
            rel.mark_stale(verdict.reason)
            for marks in pipeline.lost_by_replica(verdict.lost_after):
                rel.ledger.dirty_apply(marks)
            rel.ledger.dirty_changed = True
            pipeline.restart_at(verdict.lost_after)
            log.info("group %s: the secondary lost changes after seq %d that it had not made durable; they are "
                     "dirty (%s)", record.id, verdict.lost_after, verdict.reason)
        elif verdict.decision in (Decision.CHECKSUM, Decision.SNAPSHOT):  # the resync finds the snapshot again
            rel.ledger.mark_everything(verdict.reason)
            rel.mark_stale(verdict.reason)
            rel.ledger.save_dirty()
        if record.stale:
            rel.set_state(R.OUT_OF_SYNC, f"replica needs a resync: {record.stale_reason}")
            self._from_replica = True
        else:
            pipeline.restart_at(welcome.last_seq)
            rel.set_state(R.IN_SYNC, verdict.reason)
            if self._tell_generation:
                self.tell_generation(conn, record.generation_ids[-1])
            rel.snapshots.retire_orphans(conn)

    def _refuse(self, reason: str) -> None:
        """When the replica holds data newer than ours, or the histories are
        unrelated, never resync (either way): stay connected, keep changes
        local and dirty, and say why — the operator decides
        (``fsrep-resync --discard``, or ``--mode full``)."""
        rel = self._rel
        if rel.record.stale:
            rel.ledger.restate(reason)
        else:
            rel.mark_stale(reason)
        self._from_replica = True  # a full resync, if the operator asks, starts at the replica's position
        rel.set_state(R.OUT_OF_SYNC, "replica connected")
        rel.set_state(R.SPLIT_BRAIN, reason + "; nothing is resynced until an operator gives up a side: "
                                              "'fsrep-resync MOUNTPOINT --discard primary|secondary' (its changes "
                                              "are copied first), or '--mode full' (the replica's, without a copy)")
        rel.divergence = divergence.this_side(rel)

    def resume(self) -> None:
        """A resync begins: after a handshake that found the replica stale,
        the stream continues from the replica's own position."""
        if self._from_replica:
            self._rel.pipeline.restart_at(self.replica_seq)
            self._from_replica = False

    def tell_generation(self, conn: tp.Connection, generation: bytes) -> None:
        """The replica learns where both sides now stand."""
        self._tell_generation = False
        self._rel.queue(conn, tp.Generation(seq=self._rel.pipeline.next_seq, generation=generation))

    def received(self, conn: tp.Connection, event: tp.Frame) -> None:
        rel = self._rel
        if isinstance(event, tp.Ack):
            now = trio.current_time()
            for entry in rel.pipeline.on_ack(event.seq, now):
                pending = rel.pending(entry)
                pending.done.set()
                if pending.split_at is not None:
                    rel.write_latency.observe(now - pending.split_at)
            run = rel.scheduler.run
            if rel.state is R.RESYNCING and run is not None:
                run.progressed(rel.pipeline.last_progress)
            rel.stream.acked(event.seq)
        elif isinstance(event, tp.Durable):
            rel.pipeline.on_durable(event.seq)
        elif isinstance(event, (tp.Listing, tp.Digests, tp.DataMap, tp.Changes, tp.Kept, tp.Fetched, tp.Adopted)):
            rel.stream.replied(event)
        elif isinstance(event, tp.Nack):
            if event.errno == errno.EDQUOT:  # the replica's undo log is full: it keeps it, the run waits
                raise tp.LinkDown(f"resync paused: the secondary cannot keep more of what it overwrites "
                                  f"({event.message})")
            if rel.state is R.RESYNCING:
                # The replica is not what the dirty set says: never retry the same steps forever.
                rel.ledger.mark_everything(f"the replica refused resync step {event.seq}: {event.message}")
            raise tp.LinkDown(f"secondary could not apply seq {event.seq}: "
                              f"{errno.errorcode.get(event.errno, event.errno)} {event.message}")

    def overdue(self, now: float) -> bool:
        return self._rel.pipeline.overdue(now, self._rel.timeouts.ack)

    def link_lost(self, reason: str) -> None:
        self._rel.link_lost(reason)

    def start_session_tasks(self, nursery: trio.Nursery) -> None:
        self._rel.scheduler.start_session_tasks(nursery)
        if self._rel.state is R.SPLIT_BRAIN:
            nursery.start_soon(divergence.other_side, self._rel)
