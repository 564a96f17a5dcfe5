"""The splitter: one consistency group's relationship with its secondary.

How this works: ``split()`` is a plain function. It assigns the group's next
sequence number, records what the mutation touches, applies it to the
primary store and queues the frame for the secondary, with no checkpoint in
between — so the local order and the sequence order are one order
(write-order fidelity). It returns a ``Pending`` the FUSE handler awaits;
acks are cumulative, so many operations are in flight at once.

The relationship holds the state and the policy and ties the parts
together; each part has one job:

- ``Pipeline`` (sans-IO): sequence numbers, what is in flight, acked, durable.
- ``Recorder``: what each mutation touches, for every tracker (activity
  log, pseudo snapshots).
- ``Snapshots``: the pseudo snapshots, their changes since, the automatic
  point when the group leaves InSync.
- ``Ledger``: the stale mark and the dirty set on disk.
- ``Link``: connection, backoff, session, reader, pinger, ack watchdog.
- ``decide`` (pure): what a connected replica needs (in sync, resync, refuse).
- ``ResyncScheduler``: runs, their queue, the stall watchdog.
- ``ResyncStream``: what a resync run sends and asks, and the mutation gate.

Policies:
- ``sync``: with no usable link, mutations are applied locally only; the
  durable ``stale`` mark is written *before* the first such mutation, and the
  group is OutOfSync until a resync.
- ``strict``: a mutation that cannot be replicated fails with EIO before it
  is applied locally; one in flight when the link fails returns EIO too
  (it was applied locally, and the group is marked stale).
- ``semi-sync``: like ``sync``, but a mutation returns once applied locally
  and queued; it waits only while the unacknowledged lag exceeds the byte
  budget. fsync still waits for both sides.
- ``async``: mutations are applied locally and marked dirty; every
  ``async_interval`` seconds a quick resync ships what is dirty. fsync is
  local. The lag (dirty bytes, seconds) is in status.

Caveats:
- A stale group stays OutOfSync after reconnecting: only a resync (dirty
  tracking) may bring it back to InSync.
"""

from __future__ import annotations

import errno
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import trio

import tracking
import transport as tp

from . import _divergence as divergence
from ._clone_backups import CloneBackups
from ._config import GroupRecord, GroupStore, parse_address
from ._faults import Faults
from ._latency import Latencies
from ._ledger import Ledger
from ._link import DEFAULT_TIMEOUTS, Link, Timeouts
from ._pipeline import NO_MARKS, Drain, InFlight, Pipeline, Position
from ._progress import MoveRun, ResyncRun
from ._recorder import ActivityTracker, Recorder
from ._scheduler import ResyncScheduler
from ._sessions import Sessions
from ._snapshots import Snapshots
from ._state import RelationshipState, check_transition
from ._status import Divergence, EndedRun, GroupStatus, QueuedRun
from ._stream import ResyncStream

__all__ = ["Pending", "Relationship", "Timeouts"]
log = logging.getLogger(__name__)
R = RelationshipState
Apply = Callable[[int | None], tp.Operation | None]


@dataclass(slots=True, eq=False)
class Pending(InFlight):
    """A replicated operation waiting for its ack."""

    done: trio.Event = field(default_factory=trio.Event)
    split_at: float | None = None  # a client's change: when split() queued it (the write latency starts there)


class Relationship:
    """A group, its secondary, its state and its in-flight operations."""

    def __init__(self, record: GroupRecord, groups: GroupStore, key: bytes,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, *, tls: ssl.SSLContext | None = None) -> None:
        self.record = record
        if not record.generations:
            record.new_generation()  # a new group, or state from before generations were kept
        self.timeouts = timeouts
        self.state = R.OUT_OF_SYNC if record.stale else R.UNINITIALIZED
        self.pipeline = Pipeline(record.last_seq)
        self.faults = Faults(record.id)
        self.activity = ActivityTracker(record.id, groups, groups.activity(record), self.faults,
                                        lambda: min(self.pipeline.durable_seq, self.snapshots.saved_seq))
        self.snapshots = Snapshots(self, groups, self.faults)
        self.recorder = Recorder([self.activity, self.snapshots])
        self.ledger = Ledger(record, groups, self.faults, self.pipeline.unsettled_marks, self.activity.settle,
                             saved_with=self.snapshots.save, leaving=self.snapshots.left_sync)
        address = parse_address(record.secondary, what="the group's secondary")
        self.sessions = Sessions(self)
        self.link = Link(self.sessions, record.id, address, key, record.group_id, timeouts, tls)
        self.scheduler = ResyncScheduler(self)
        self.stream = ResyncStream(self)
        self.replica_may_be_ahead = False  # after a crash: the replica may hold changes we lost count of
        self.lag_budget = 64 * 1024 * 1024  # semi-sync: writes wait while more than this is unacknowledged
        self.lag_since: float | None = None  # when the first change still missing on the replica was made
        self.internal_errors = 0  # requests of this group that failed with a bug (EIO)
        self.divergence: Divergence | None = None  # in split brain: what each side changed since the common point
        self.bytes_cloned = 0  # data of files cloned here (fsrep clone): each side copied its own
        self.bytes_sent = 0  # file data put on the link (replicated changes and resyncs)
        self.write_latency = Latencies()  # clients' changes: split() to the ack (``--metrics``)
        self.move: MoveRun | None = None  # the last move of the group's data to another file system
        self.moves = 0  # cutovers of moves across file systems (``rekey``)
        # Just after a move's cutover: its old inode numbers -> the copy's, for the marks of requests made before it
        # and recorded after it (``remarked``); None otherwise.
        self.moved_inodes: Mapping[int, int] | None = None
        self.clone_backups: CloneBackups | None = None  # --clone-backup: clones made while out of sync kept there
        # Moved to another primary (``_move_primary``): set once the secondary holds every change acknowledged
        # here durably and this side let it go; an fsync here waits for it.
        self.let_go = trio.Event()
        if record.moved_to:
            self.let_go.set()

    @property
    def dirty(self) -> tracking.DirtySet:
        return self.ledger.dirty

    @property
    def conn(self) -> tp.Connection | None:
        return self.link.conn

    @property
    def position(self) -> Position:
        """Where the replica is known to be: the last acknowledged change."""
        return Position(self.record.generations[-1], self.pipeline.acked_seq)

    # --- the write path ----------------------------------------------------------

    def split(self, apply: Apply, marks: tracking.Marks = NO_MARKS, *,
              frame_first: Callable[[int], tp.Operation] | None = None) -> Pending | None:
        """Apply one mutation locally and queue it for the secondary under
        the next sequence number — when the group is InSync, or Resyncing and
        *marks* touch nothing still dirty. Otherwise the change is local only
        and *marks* go into the dirty set.

        *apply(seq)* does the local change and returns the frame to send, or
        None when the change has nothing to replicate; it gets ``None`` when
        the change is local only. It must not checkpoint.

        *frame_first(seq)*, for large writes, builds the frame before the
        local change: it goes to the socket first, so the secondary applies
        it while this side does. Should the local change then fail, the
        replica holds what this side does not: the link is dropped, and the
        resync that follows copies this side's data (the marks) over it.

        Returns:
            The Pending to await, or None when nothing was sent.
        Raises:
            OSError: the local change failed or could not be recorded (no
                sequence number is used), or EIO under ``strict`` when the
                group cannot replicate.
        """
        self.refuse_if_moved()
        conn = self.link.conn
        if conn is not None and ((self.state is R.IN_SYNC and self.record.policy != "async") or
                                 (self.state is R.RESYNCING and not self.ledger.dirty.blocks(marks))):
            seq = self.pipeline.next_seq
            self.recorder.record(marks, seq)
            if frame_first is not None:
                pending = self.queue(conn, frame_first(seq), marks, timed=True)
                self.push()
                try:
                    apply(pending.seq)
                except OSError as exc:
                    self.link_lost(f"a local write failed after it was sent ({exc}); the resync repairs the replica")
                    raise
                return pending
            op = apply(seq)
            if op is None:
                return None
            pending = self.queue(conn, op, marks, timed=True)
            self.push()  # on its way now, not after the sender task's turn: that is latency
            return pending
        self._refuse_if_strict(f" is {self.state.value}")
        if not self.record.stale:  # the first change kept local: by a resync, by async, or without a link
            if self.state is R.IN_SYNC:  # async
                self.mark_stale("policy async: changes wait for the next shipment")
                self.set_state(R.OUT_OF_SYNC, "policy async: changes wait for the next shipment", quiet=True)
            else:
                self.mark_stale("changes were kept local during a resync" if self.state is R.RESYNCING
                                else "change made without a link")
        self._apply_local(apply, marks)
        return None

    def keep_local(self, apply: Apply, marks: tracking.Marks, reason: str) -> None:
        """Apply a change that cannot be replicated even with the link up
        (no name of the file is known here, so no frame can name it): local
        only, its *marks* dirty, and a quick resync — which finds the file
        by its inode — is started. Never checkpoints.

        Raises:
            OSError: EIO under ``strict``; the local change failed; or the
                stale mark cannot be saved.
        """
        self.refuse_if_moved()
        self._refuse_if_strict(f": {reason}")
        self.leave_sync(reason)
        self._apply_local(apply, marks)
        if self.link.conn is not None and self.state is R.OUT_OF_SYNC and self.scheduler.hook is not None:
            self.request_resync("quick", reason=reason)

    def leave_sync(self, reason: str) -> None:
        """From now on clients' changes stay local and dirty until a resync
        (the stale mark durable first): for a difference this side learns
        of outside the write path. Never checkpoints."""
        self.mark_stale(reason)
        if self.state is R.IN_SYNC:
            self.set_state(R.OUT_OF_SYNC, reason)

    def refuse_if_moved(self) -> None:
        """Raises OSError(EROFS) once the group moved to another primary
        (``_move_primary``): this side keeps a read-only copy."""
        if self.record.moved_to:
            raise OSError(errno.EROFS, f"group {self.record.id} moved to the primary at {self.record.moved_to}; "
                                       f"its copy here is read-only")

    def _refuse_if_strict(self, why: str) -> None:
        if self.record.policy == "strict":
            raise OSError(errno.EIO, f"group {self.record.id}{why}; policy strict refuses changes that "
                                     f"cannot be replicated")

    def _apply_local(self, apply: Apply, marks: tracking.Marks) -> None:
        """The local-only change: the stale mark on disk first, then the
        trackers, the change, and its marks in the dirty set."""
        self.ledger.stale_durable()
        if self.lag_since is None:
            self.lag_since = trio.current_time()
        self.recorder.record(marks, tracking.LOCAL_SEQ)
        apply(None)
        self.ledger.dirty_apply(marks)

    def push(self) -> None:
        """Hand queued frames to the socket now (see ``Connection.push_now``)."""
        if self.link.conn is not None:
            self.link.conn.push_now()

    def queue(self, conn: tp.Connection, op: tp.Operation, marks: tracking.Marks = NO_MARKS, *,
              timed: bool = False) -> Pending:
        """Put *op* in flight on *conn*; *timed*: a client's change, whose
        wait for the ack goes into ``write_latency``. Never checkpoints."""
        now = trio.current_time()
        pending = Pending(op.seq, op.payload_size(), marks, op.BARRIER, split_at=now if timed else None)
        self.bytes_sent += pending.nbytes
        self.pipeline.add(pending, now)
        try:
            conn.enqueue(op)
        except tp.LinkDown as exc:
            self.link_lost(str(exc))
        return pending

    @staticmethod
    def pending(entry: InFlight) -> Pending:
        return cast(Pending, entry)

    async def admit(self) -> None:
        """Wait while a resync holds mutations (see ``ResyncStream.admit``)."""
        await self.stream.admit()

    async def wait(self, pending: Pending | None) -> None:
        """Wait until *pending* is acknowledged — under ``semi-sync`` and
        ``async`` only while the lag exceeds the budget, unless it is a
        barrier (fsync).

        Raises:
            OSError(EIO): under ``strict``, when the link was lost first.
        """
        if pending is None:
            return
        if self.record.policy in ("semi-sync", "async") and not pending.barrier:
            while self.pipeline.first is not None and self.pipeline.lag_bytes > self.lag_budget:
                await self.pending(self.pipeline.first).done.wait()
            return
        await pending.done.wait()
        if not pending.ok and self.record.policy == "strict":
            raise OSError(errno.EIO, "the secondary did not acknowledge the change (policy strict)")

    async def drained(self, drain: Drain) -> bool:
        """Wait until everything up to *drain* is acknowledged. Returns
        False when the link was lost first."""
        entry = self.pipeline.blocker(drain)
        if entry is None:
            return True
        await self.pending(entry).done.wait()
        return bool(entry.ok)

    # --- state -----------------------------------------------------------------

    def set_state(self, new: RelationshipState, why: str, *, quiet: bool = False) -> None:
        if new is self.state:
            return
        check_transition(self.state, new)
        say = log.warning if new is R.SPLIT_BRAIN else log.debug if quiet else log.info  # an operator must act
        say("group %s: %s -> %s at %s (%s)", self.record.id, self.state.value, new.value, self.position, why,
            extra={"group": self.record.id, "position": str(self.position), "event": "state", "state": new.value,
                   "previous": self.state.value, "reason": why})
        self.state = new

    def mark_stale(self, reason: str) -> None:
        """Durably record that the replica may lack changes. Written before
        any unreplicated change is applied locally."""
        self.ledger.mark_stale(reason, self.pipeline.acked_seq)

    def mark_dirty(self, marks: tracking.Marks, reason: str) -> None:
        """Record a difference made outside the write path (a group declared
        or retired moves a subtree between replicas)."""
        self.mark_stale(reason)
        self.ledger.dirty_apply(marks)
        self.ledger.save_dirty()

    def rekey(self, inodes: Mapping[int, int]) -> bool:
        """The group's data was copied to another file system (``fsrep-move``),
        where every inode has another number (*inodes*: old -> new): what
        tracks it by inode goes under the new numbers, and is saved.
        Whether the dirty set, the snapshots and the activity log are on disk."""
        self.moves += 1
        self.moved_inodes = inodes  # until the move's clean-up: for requests under way then
        self.ledger.replace_dirty(self.ledger.dirty.rekeyed(inodes))
        self.snapshots.rekey(inodes)
        activity = self.activity.rekey(inodes)
        self.pipeline.rekey(inodes)
        self.stream.to_compare = {inodes[ino]: path for ino, path in self.stream.to_compare.items() if ino in inodes}
        self.ledger.dirty_changed = True
        return self.ledger.save_dirty() and activity

    def remarked(self, marks: tracking.Marks) -> tracking.Marks:
        """*marks* of a request made before a move's cutover and recorded
        after it, under the copy's inode numbers."""
        return marks if self.moved_inodes is None else marks.rekeyed(self.moved_inodes, keep=True)

    def mark_everything_dirty(self, reason: str) -> None:
        """Tracking can no longer say what differs: compare the whole tree."""
        self.mark_stale(reason)
        self.ledger.mark_everything(reason)
        self.ledger.save_dirty()

    def internal_fault(self, reason: str) -> None:
        """A bug failed a request of this group: what it changed is not
        known, so the whole tree is compared by digest (now, when
        connected; else when the secondary is back), and status says why."""
        self.internal_errors += 1
        self.link.last_error = reason
        self.mark_everything_dirty(reason)
        if self.link.conn is not None and self.state is not R.SPLIT_BRAIN:
            self.request_resync("checksum", reason=reason)

    def link_lost(self, reason: str) -> None:
        """The secondary is unreachable: mark stale, go OutOfSync, fail every
        operation in flight and drop the connection. Never checkpoints."""
        self.link.last_error = reason
        self.mark_stale(f"link lost: {reason}")
        if self.state is not R.OUT_OF_SYNC:
            self.set_state(R.OUT_OF_SYNC, reason)
        if self.link.conn is not None:
            log.warning("group %s: link to %s lost at %s: %s", self.record.id, self.record.secondary,
                        self.position, reason)
        for entry in self.pipeline.lost():
            self.ledger.dirty_apply(entry.marks)
            self.pending(entry).done.set()
        self.ledger.dirty_changed = True
        self.stream.fail_questions()
        self.scheduler.interrupted(self.scheduler.run)
        self.ledger.save_dirty()
        self.link.drop()

    # --- the link, the resync runs: what the daemon calls ---------------------------

    async def connect(self) -> None:
        """Connect and authenticate once (see ``Link.connect``)."""
        await self.link.connect()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up and the dirty set saved until cancelled or
        closed. A stale replica found on reconnection is resynced by the
        scheduler's hook (set by the daemon)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.ledger.save_periodically)
            nursery.start_soon(self.snapshots.run_schedule)
            async with self.link.running():
                task_status.started()
                await self.link.stopped()
            nursery.cancel_scope.cancel()

    async def reconnect_now(self) -> None:
        await self.link.reconnect_now()

    def request_resync(self, mode: str, *, reason: str, rate_limit: int = 0, routine: bool = False,
                       snapshot: str = "", keep_divergent: bool = False, pull_into: str = "", restore: bytes = b"",
                       restore_into: str = "") -> ResyncRun:
        return self.scheduler.request(mode, reason=reason, rate_limit=rate_limit, routine=routine, snapshot=snapshot,
                                      keep_divergent=keep_divergent, pull_into=pull_into, restore=restore,
                                      restore_into=restore_into)

    async def resync_now(self, reason: str) -> None:
        await self.scheduler.resync_now(reason)

    async def drain_and_close(self, timeout: float, *,  # noqa: ASYNC109 - the bound is in the message
                              goodbye: bool = False) -> None:
        """Wait (bounded) for what is in flight, say goodbye, and persist the
        group as cleanly shut down. *goodbye*: wait (2 s at most) for the
        secondary's own, which comes once it made what it holds durable
        (and reported it) — nothing may be sent meanwhile."""
        with trio.move_on_after(timeout):
            await self.drained(self.pipeline.drain())
        if len(self.pipeline):
            self.link_lost(f"unacknowledged after {timeout:g}s at shutdown")
        conn = self.link.conn
        self.link.closing = True
        if conn is not None:
            with trio.move_on_after(2):
                try:
                    await conn.send(tp.Close(last_seq=self.pipeline.acked_seq))
                    if goodbye:
                        await self.link.stopped()
                except (tp.LinkDown, tp.ProtocolError):
                    pass
        self.link.close()
        if self.ledger.shut_down(self.pipeline.acked_seq):
            log.info("group %s: shut down cleanly at %s (%s)", self.record.id, self.position, self.state.value)

    # --- status ------------------------------------------------------------------

    def lag_seconds(self) -> float:
        """How long the replica has been missing changes made here."""
        now = trio.current_time()
        if self.record.stale and self.lag_since is not None:
            return round(now - self.lag_since, 3)
        since = self.pipeline.waiting_since()
        return round(now - since, 3) if since is not None else 0.0

    def statistics(self) -> GroupStatus:
        return group_status(self)


def group_status(rel: Relationship) -> GroupStatus:
    """What ``fsrep status`` shows of *rel*, now."""
    dirty, record, pipeline, scheduler = rel.dirty, rel.record, rel.pipeline, rel.scheduler
    dirty_bytes = dirty.dirty_bytes
    run = scheduler.run
    progress = run.snapshot(dirty_bytes, trio.current_time(), dirty.dir_count) if run is not None else None
    running = progress if progress is not None and progress.running else None
    queued = scheduler.queued
    return GroupStatus(
        id=record.id,
        path="/" + record.path,
        state=rel.state.value,
        policy=record.policy,
        secondary=record.secondary,
        connected=rel.link.conn is not None,
        last_acked_seq=pipeline.acked_seq,
        ops_in_flight=len(pipeline),
        lag_bytes=pipeline.lag_bytes + (dirty_bytes if record.stale else 0),
        lag_seconds=rel.lag_seconds(),
        bytes_in_flight=pipeline.bytes_in_flight,
        dirty_bytes=dirty_bytes,
        bytes_remaining=running.bytes_remaining if running else dirty_bytes,
        bytes_per_second=progress.bytes_per_second if progress else 0,
        eta_seconds=running.eta_seconds if running else None,
        percent=running.percent if running else (100.0 if rel.state is R.IN_SYNC else 0.0),
        resync=progress,
        resync_queued=QueuedRun(queued.id, queued.mode, queued.restarts) if queued is not None else None,
        resync_recent=tuple(EndedRun(r.id, r.mode, r.outcome, r.verified) for r in scheduler.recent),
        resync_bytes_sent=rel.stream.bytes_sent,
        bytes_cloned=rel.bytes_cloned,
        last_resync_seconds=round(rel.stream.last_seconds, 3),
        generation=record.generations[-1],
        stale_reason=record.stale_reason if record.stale else "",
        last_error=rel.link.last_error,
        faults=tuple(rel.faults.messages()),
        internal_errors=rel.internal_errors,
        snapshot=rel.snapshots.newest_common(),
        divergence=divergence.current(rel) if rel.state is R.SPLIT_BRAIN else None,
        bytes_sent=rel.bytes_sent,
        data_dir=record.store,
        move=rel.move.snapshot(trio.current_time()) if rel.move is not None else None,
        reconnects=max(0, rel.link.established - 1),
        moved_to=record.moved_to,
        move_unconfirmed=record.move_unconfirmed,
    )
