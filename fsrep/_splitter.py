"""The splitter: one consistency group's relationship with its secondary.

How this works: ``split()`` is a plain function. It assigns the group's next
sequence number, applies the mutation to the primary store and queues the
frame for the secondary, with no checkpoint in between — so the local order
and the sequence order are one order (write-order fidelity). It returns a
``Pending`` the FUSE handler awaits; acks are cumulative, so many operations
are in flight at once. ``serve()`` owns the link: it connects, reads acks,
pings an idle link, and declares the link lost when the connection drops or
no ack arrives within the ack timeout while something is in flight.

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

import collections
import contextlib
import errno
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

import tracking
import transport as tp

from ._config import GroupRecord, GroupStore
from ._progress import ResyncRun, clamp_rate, stronger
from ._state import RelationshipState, check_transition
from ._status import EndedRun, GroupStatus, QueuedRun

log = logging.getLogger(__name__)
R = RelationshipState
STABLE_SESSION = 10.0
DIRTY_SAVE_INTERVAL = 1.0
DIRTY_SAVE_SHARE = 20  # the periodic save waits this many times as long as the last one took
NO_MARKS = tracking.Marks()
OP_OVERHEAD = 256  # bytes an operation without data counts for in the semi-sync budget


@dataclass(slots=True)
class Pending:
    """A replicated operation waiting for its ack."""

    seq: int
    nbytes: int
    marks: tracking.Marks = NO_MARKS
    barrier: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    ack: float = 10.0
    ping: float = 2.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    resync_stall: float = 60.0  # no progress for this long: the resync is restarted
    async_interval: float = 5.0  # policy async: how often dirty regions are shipped


class Relationship:
    """A group, its secondary, its state and its in-flight operations."""

    def __init__(self, record: GroupRecord, groups: GroupStore, key: bytes,
                 timeouts: Timeouts = Timeouts(), *, tls: ssl.SSLContext | None = None) -> None:
        self.record = record
        if not record.generations:
            record.new_generation()  # a new group, or state from before generations were kept
        self._groups = groups
        self._key = key
        self._tls = tls
        self.timeouts = timeouts
        self.host, _, port = record.secondary.rpartition(":")
        self.host = self.host.strip("[]")
        self.port = int(port)
        self.state = R.OUT_OF_SYNC if record.stale else R.UNINITIALIZED
        self.conn: tp.Connection | None = None
        self.next_seq = record.last_seq + 1
        self.acked_seq = record.last_seq
        self.replica_seq = 0
        self.resync_bytes = 0
        self.last_resync_seconds = 0.0
        self._inflight: collections.deque[Pending] = collections.deque()
        self._bytes_in_flight = 0
        self._last_progress = 0.0
        self._session_scope: trio.CancelScope | None = None
        self._closing = False
        self._gate: trio.Event | None = None
        self.dirty = tracking.DirtySet()
        self._dirty_changed = False
        self.activity = tracking.ActivityLog()
        self._activity_file = groups.activity(record)
        self.replica_may_be_ahead = False  # after a crash: the replica may hold changes we lost count of
        # Acknowledged but not yet durable on the secondary: (seq, marks), to
        # mark dirty again should the secondary crash and come back behind.
        self._not_durable: collections.deque[tuple[int, tracking.Marks]] = collections.deque()
        self.durable_seq = record.last_seq
        self._replies: dict[int, tuple[trio.Event, list[tp.Frame]]] = {}
        self.resync_hook: Callable[[ResyncRun], Awaitable[None]] | None = None
        self.resync_run: ResyncRun | None = None  # the latest run, running or finished
        self._resync_queued: ResyncRun | None = None
        self._resync_wakeup = trio.Event()
        self._run_ended = trio.Event()
        self._reconnect_wakeup = trio.Event()  # cuts a backoff short (reconnect_now)
        self._attempted = trio.Event()  # set after each connection attempt
        self._run_ids = 0
        self._recent_runs: collections.deque[ResyncRun] = collections.deque(maxlen=8)
        self.default_rate_limit = 0  # bytes/s for runs not given one
        self.lag_budget = 64 * 1024 * 1024  # semi-sync: writes wait while more than this is unacknowledged
        self._lag_since: float | None = None  # when the first change still missing on the replica was made
        self._seq_from_replica = False  # the next resync starts at the replica's position
        self._catch_up_generation = False
        self.last_error = ""
        self.internal_errors = 0  # requests of this group that failed with a bug (EIO)
        self._stale_unsaved = False  # the stale mark is set but not on disk yet
        self._said: set[str] = set()  # errors logged once until they clear

    # --- the write path ----------------------------------------------------------

    def split(self, apply: Callable[[int | None], tp.Operation | None],
              marks: tracking.Marks = NO_MARKS, *,
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
            OSError: the local change failed (no sequence number is used), or
                EIO under ``strict`` when the group cannot replicate.
        """
        conn = self.conn
        if conn is not None and ((self.state is R.IN_SYNC and self.record.policy != "async") or
                                 (self.state is R.RESYNCING and not self.dirty.blocks(marks))):
            self._activate(marks, self.next_seq)
            if frame_first is not None:
                pending = self._queue_op(conn, frame_first(self.next_seq), marks)
                self.push()
                try:
                    apply(pending.seq)
                except OSError as exc:
                    self.link_lost(f"a local write failed after it was sent ({exc}); the resync repairs the replica")
                    raise
                return pending
            op = apply(self.next_seq)
            if op is None:
                return None
            pending = self._queue_op(conn, op, marks)
            self.push()  # on its way now, not after the sender task's turn: that is latency
            return pending
        if self.record.policy == "strict":
            raise OSError(errno.EIO, f"group {self.record.id} is {self.state.value}; policy strict refuses "
                                     f"changes that cannot be replicated")
        if not self.record.stale:  # the first change kept local: by a resync, by async, or without a link
            if self.state is R.IN_SYNC:  # async
                self.mark_stale("policy async: changes wait for the next shipment")
                self._set_state(R.OUT_OF_SYNC, "policy async: changes wait for the next shipment", quiet=True)
            else:
                self.mark_stale("changes were kept local during a resync" if self.state is R.RESYNCING
                                else "change made without a link")
        self._apply_local(apply, marks)
        return None

    def keep_local(self, apply: Callable[[int | None], tp.Operation | None], marks: tracking.Marks,
                   reason: str) -> None:
        """Apply a change that cannot be replicated even with the link up
        (no name of the file is known here, so no frame can name it): local
        only, its *marks* dirty, and a quick resync — which finds the file
        by its inode — is started. Never checkpoints.

        Raises:
            OSError: EIO under ``strict``; the local change failed; or the
                stale mark cannot be saved.
        """
        if self.record.policy == "strict":
            raise OSError(errno.EIO, f"group {self.record.id}: {reason}; policy strict refuses changes that "
                                     f"cannot be replicated")
        self.mark_stale(reason)
        if self.state is R.IN_SYNC:
            self._set_state(R.OUT_OF_SYNC, reason)
        self._apply_local(apply, marks)
        if self.conn is not None and self.state is R.OUT_OF_SYNC and self.resync_hook is not None:
            self.request_resync("quick", reason=reason)

    def _apply_local(self, apply: Callable[[int | None], tp.Operation | None], marks: tracking.Marks) -> None:
        """The local-only change: the stale mark on disk first, then the
        activity log, the change, and its marks in the dirty set."""
        self._stale_durable()
        if self._lag_since is None:
            self._lag_since = trio.current_time()
        self._activate(marks, tracking.LOCAL_SEQ)
        apply(None)
        self.dirty.apply(marks)
        self._dirty_changed = True

    def push(self) -> None:
        """Hand queued frames to the socket now (see ``Connection.push_now``)."""
        if self.conn is not None:
            self.conn.push_now()

    def _activate(self, marks: tracking.Marks, seq: int) -> None:
        """Make *marks* durable in the activity log before the change is
        applied, when they reach an extent not already active."""
        if marks and self.activity.touch(marks, seq, self.durable_seq):
            payload = self.activity.payload()
            try:
                self._groups.durably(lambda: self._activity_file.save(payload))
            except OSError as exc:
                self.activity.save_failed()
                self._say_once("activity", f"cannot save the activity log ({exc}); changes are refused until it "
                                           f"can be saved")
                raise OSError(exc.errno or errno.EIO, f"group {self.record.id}: cannot record the change in the "
                                                      f"activity log: {exc.strerror or exc}") from None
            self._said.discard("activity")

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
            while self._inflight and self._lag_bytes() > self.lag_budget:
                await self._inflight[0].done.wait()
            return
        await pending.done.wait()
        if not pending.ok and self.record.policy == "strict":
            raise OSError(errno.EIO, "the secondary did not acknowledge the change (policy strict)")

    # --- state -----------------------------------------------------------------

    def _lag_bytes(self) -> int:
        return self._bytes_in_flight + OP_OVERHEAD * len(self._inflight)

    def _set_state(self, new: RelationshipState, why: str, *, quiet: bool = False) -> None:
        if new is self.state:
            return
        check_transition(self.state, new)
        (log.debug if quiet else log.info)("group %s: %s -> %s (%s)", self.record.id, self.state.value, new.value, why)
        self.state = new

    def mark_stale(self, reason: str) -> None:
        """Durably record that the replica may lack changes. Written before
        any unreplicated change is applied locally."""
        if self.record.stale:
            return
        self.record.stale = True
        self.record.stale_reason = reason
        self.record.last_seq = self.acked_seq
        self.record.new_generation()  # our data moves ahead of the replica's
        self._stale_unsaved = True
        try:
            self._stale_durable()
        except OSError:
            pass  # said once; every change kept local is refused until the mark is saved

    def _stale_durable(self) -> None:
        """Make sure the stale mark is on disk (retried while it is not).

        Raises:
            OSError: it cannot be saved (a full disk): the caller must not
                make a change the replica will lack.
        """
        if not self._stale_unsaved:
            return
        try:
            self._groups.save(self.record)
        except OSError as exc:
            self._say_once("stale", f"cannot record that the replica is stale ({exc}); changes that cannot be "
                                    f"replicated are refused until it can be saved")
            raise OSError(exc.errno or errno.EIO, f"group {self.record.id}: cannot record durably that the "
                                                  f"replica is stale: {exc.strerror or exc}") from None
        self._stale_unsaved = False
        if "stale" in self._said:
            self._said.discard("stale")
            log.info("group %s: the stale mark is saved; changes are accepted again", self.record.id)

    def _say_once(self, what: str, message: str) -> None:
        """Log an error once until it clears, not once per refused change."""
        if what not in self._said:
            self._said.add(what)
            log.error("group %s: %s", self.record.id, message)
            self.last_error = message

    def mark_dirty(self, marks: tracking.Marks, reason: str) -> None:
        """Record a difference made outside the write path (a group declared
        or retired moves a subtree between replicas)."""
        self.mark_stale(reason)
        self.dirty.apply(marks)
        self._dirty_changed = True
        self.save_dirty()

    def mark_everything_dirty(self, reason: str) -> None:
        """Tracking can no longer say what differs: compare the whole tree."""
        self.mark_stale(reason)
        self.dirty.mark_everything(reason)
        self._dirty_changed = True
        self.save_dirty()

    def internal_fault(self, reason: str) -> None:
        """A bug failed a request of this group: what it changed is not
        known, so the whole tree is compared by digest (now, when
        connected; else when the secondary is back), and status says why."""
        self.internal_errors += 1
        self.last_error = reason
        self.mark_everything_dirty(reason)
        if self.conn is not None and self.state is not R.SPLIT_BRAIN:
            self.request_resync("checksum", reason=reason)

    def link_lost(self, reason: str) -> None:
        """The secondary is unreachable: mark stale, go OutOfSync, fail every
        operation in flight and drop the connection. Never checkpoints."""
        self.last_error = reason
        self.mark_stale(f"link lost: {reason}")
        if self.state is not R.OUT_OF_SYNC:
            self._set_state(R.OUT_OF_SYNC, reason)
        if self.conn is not None:
            log.warning("group %s: link to %s lost: %s", self.record.id, self.record.secondary, reason)
        self.conn = None
        while self._inflight:
            pending = self._inflight.popleft()
            self.dirty.apply(pending.marks)
            pending.done.set()
        self._dirty_changed = True
        self._bytes_in_flight = 0
        for slot in self._replies.values():
            slot[0].set()
        self._replies.clear()
        self._interrupted(self.resync_run)
        self.save_dirty()
        if self._session_scope is not None:
            self._session_scope.cancel()

    def _acked(self, seq: int) -> None:
        while self._inflight and self._inflight[0].seq <= seq:
            pending = self._inflight.popleft()
            self._bytes_in_flight -= pending.nbytes
            pending.ok = True
            pending.done.set()
            if pending.marks:
                self._not_durable.append((pending.seq, pending.marks))
        self.acked_seq = max(self.acked_seq, seq)
        self._last_progress = trio.current_time()
        if self.state is R.RESYNCING and self.resync_run is not None:
            self.resync_run.progressed(self._last_progress)
        for asked, (event, _) in self._replies.items():
            if asked <= seq:
                event.set()  # acked without its reply: ask() raises instead of waiting forever

    # --- the link --------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and authenticate once; on success the group is InSync (or
        OutOfSync, connected, when the replica is stale).

        Raises:
            AuthenticationError: the secondary does not hold our key.
            LinkDown: it could not be reached.
        """
        conn, welcome = await tp.open_primary_connection(
            self.host, self.port, self._key, self.record.group_id, self.timeouts.connect, tls=self._tls)
        log.info("group %s: connected to %s%s and authenticated; replica at seq %d, primary at seq %d",
                 self.record.id, self.record.secondary, f" over {conn.tls_version}" if conn.tls_version else "",
                 welcome.last_seq, self.acked_seq)
        self.conn = conn
        self.last_error = ""
        self.replica_seq = welcome.last_seq
        if self._refuse_by_generation(welcome):
            return
        # A fresh replica is empty (new, or its directory was removed): the marks kept for a crash of the
        # secondary cover only what was not yet durable there, never all it lacks.
        behind = self.durable_seq <= welcome.last_seq < self.acked_seq and not welcome.fresh
        if behind and not self.record.stale:
            self.mark_stale(f"the secondary came back at seq {welcome.last_seq}, behind {self.acked_seq}")
        if behind:
            # It lost acknowledged changes it had not made durable; we kept their marks.
            for seq, marks in self._not_durable:
                if seq > welcome.last_seq:
                    self.dirty.apply(marks)
            self._dirty_changed = True
            self.acked_seq = welcome.last_seq
            log.info("group %s: the secondary lost changes after seq %d that it had not made durable; "
                     "they are dirty", self.record.id, welcome.last_seq)
        elif not (self.acked_seq <= welcome.last_seq and
                  (welcome.last_seq < self.next_seq or self.replica_may_be_ahead)):
            # The replica lost acknowledged changes, or holds changes this
            # primary never sent: tracking cannot say what differs.
            reason = (f"the secondary has an empty replica (new, or its directory was removed), primary "
                      f"acknowledged {self.acked_seq}" if welcome.fresh else
                      f"replica at seq {welcome.last_seq}, primary acknowledged {self.acked_seq}")
            self.dirty.mark_everything(reason)
            self._dirty_changed = True
            self.mark_stale(reason)
            self.save_dirty()
        if self.record.stale:
            self._set_state(R.OUT_OF_SYNC, f"replica needs a resync: {self.record.stale_reason}")
            self._seq_from_replica = True
        else:
            self.next_seq = welcome.last_seq + 1
            self.acked_seq = welcome.last_seq
            self._set_state(R.IN_SYNC, "replica matches the primary")
            if self._catch_up_generation:
                self._send_generation(conn, self.record.generation_ids[-1])

    def _refuse_by_generation(self, welcome: tp.Welcome) -> bool:
        """Compare generation histories. When the replica holds data newer
        than ours, or they are unrelated, never resync (either way): stay
        connected, keep changes local and dirty, and say why — the operator
        decides (``fsrep-resync --mode full`` discards the replica's side)."""
        theirs = tracking.generations.unpack(welcome.generations)
        verdict = tracking.generations.compare(self.record.generation_ids, theirs)
        if verdict is tracking.Verdict.REPLICA_NEWER:
            reason = ("the replica holds newer data than this primary (it was written to as a primary after "
                      f"generation {self.record.generations[-1]})")
        elif verdict is tracking.Verdict.UNRELATED and not (welcome.fresh or welcome.last_seq == 0):
            reason = (f"the replica's generation {theirs[-1].hex()} is not in this primary's history, nor ours in "
                      "its: cannot tell which side is newer")
        else:
            # A new replica, or one that missed our last Generation frame, learns where it stands.
            self._catch_up_generation = verdict is not tracking.Verdict.SAME
            return False
        self.mark_stale(reason)
        self.record.stale_reason = reason
        self._stale_unsaved = True
        with contextlib.suppress(OSError):  # said once; retried before any change is kept local
            self._stale_durable()
        self._seq_from_replica = True  # a full resync, if the operator asks, starts at the replica's position
        self._set_state(R.OUT_OF_SYNC, "replica connected")
        self._set_state(R.SPLIT_BRAIN, reason + "; nothing is resynced until an operator runs "
                                                "'fsrep-resync --mode full' (which discards the replica's changes)")
        return True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled: run the session while
        connected, reconnect with backoff when not. A stale replica found on
        reconnection is resynced by ``resync_hook`` (set by the daemon).

        The backoff only resets after a session that lasted a while, so a
        peer that accepts and then drops us is retried slowly, never in a
        storm."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._save_dirty_periodically)
            task_status.started()
            await self._keep_linked()
            nursery.cancel_scope.cancel()

    async def _save_dirty_periodically(self) -> None:
        """Save the dirty set about once a second — less often when it is
        large, so that saving (the whole set, each time) never takes more
        than 1/DIRTY_SAVE_SHARE of the time: a resync of a tree of many
        directories would otherwise spend its time saving. What is not
        saved yet is covered by the activity log, which settles only
        after a save."""
        took = 0.0
        while True:
            await trio.sleep(max(DIRTY_SAVE_INTERVAL, took * DIRTY_SAVE_SHARE))
            started = time.perf_counter()
            self.save_dirty()
            took = time.perf_counter() - started

    async def reconnect_now(self) -> None:
        """Try the secondary at once rather than at the end of the backoff
        (the operator says it is back); return when that attempt has ended."""
        if self.conn is not None or self._closing:
            return
        attempted = self._attempted
        self._reconnect_wakeup.set()
        with trio.move_on_after(self.timeouts.connect + 1):
            await attempted.wait()

    async def _back_off(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._reconnect_wakeup.wait()
        self._reconnect_wakeup = trio.Event()

    async def _keep_linked(self) -> None:
        backoff = self.timeouts.backoff_min
        while not self._closing:
            if self.conn is None:
                try:
                    await self.connect()
                except tp.AuthenticationError as exc:
                    self.last_error = str(exc)
                    log.error("group %s: %s", self.record.id, exc)
                except tp.LinkDown as exc:
                    if str(exc) != self.last_error:
                        log.info("group %s: reconnect failed: %s", self.record.id, exc)
                    self.last_error = str(exc)
                self._attempted.set()
                self._attempted = trio.Event()
                if self.conn is None:
                    await self._back_off(backoff)
                    backoff = min(backoff * 2, self.timeouts.backoff_max)
                    continue
            started = trio.current_time()
            try:
                await self._run_session(self.conn)
            except Exception as exc:  # a bug must cost a reconnect, not the mount
                log.exception("group %s: internal error in the replication session", self.record.id)
                self.link_lost(f"internal error: {exc!r}")
            if trio.current_time() - started > STABLE_SESSION:
                backoff = self.timeouts.backoff_min
            elif not self._closing:
                await self._back_off(backoff)
                backoff = min(backoff * 2, self.timeouts.backoff_max)

    async def _run_session(self, conn: tp.Connection) -> None:
        try:
            with trio.CancelScope() as self._session_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.serve_sender)
                    nursery.start_soon(self._pinger, conn)
                    nursery.start_soon(self._watchdog)
                    if self.resync_hook is not None:
                        if self.record.stale and self.state is not R.SPLIT_BRAIN:
                            self.request_resync("quick", reason=f"the replica is stale: {self.record.stale_reason}")
                        nursery.start_soon(self._resync_runner)
                        if self.record.policy == "async":
                            nursery.start_soon(self._ship_periodically)
                    await self._reader(conn)
                    nursery.cancel_scope.cancel()
        except* tp.LinkDown as group:
            self.link_lost(str(group.exceptions[0]))
        finally:
            self._session_scope = None
            if self.conn is conn and not self._closing:
                self.link_lost("session ended")
            await conn.aclose()

    # --- resync runs -----------------------------------------------------------------

    def request_resync(self, mode: str, *, reason: str, rate_limit: int = 0, routine: bool = False) -> ResyncRun:
        """Start a resync, or join the one running or queued (raising its
        mode to *mode* if that does more). Returns the run that will do it.

        Raises:
            ValueError: unknown mode.
        """
        if self.state is R.SPLIT_BRAIN and mode != "full":
            raise ValueError(f"group {self.record.id} is SplitBrain ({self.record.stale_reason}); only "
                             f"'--mode full' resyncs it, discarding the replica's changes")
        now = trio.current_time()
        rate_limit = rate_limit or self.default_rate_limit
        running = self.resync_run if self.resync_run is not None and self.resync_run.running else None
        if running is not None and self.state is not R.RESYNCING:
            running = None  # its work is done (it is only being wound up) or not begun: queue another
        if running is not None and stronger(running.mode, mode) == running.mode and self._resync_queued is None:
            if rate_limit:
                running.rate_limit = clamp_rate(rate_limit)
            return running
        queued = self._resync_queued
        if queued is not None:
            queued.mode = stronger(queued.mode, mode)
            queued.rate_limit = clamp_rate(rate_limit or queued.rate_limit)
            return queued
        self._run_ids += 1
        run = ResyncRun(self._run_ids, mode, reason, rate_limit, queued_at=now, routine=routine)
        if mode == "quick" and self.state is R.IN_SYNC and not self.dirty:
            run.start(now)
            self._finish_run(run, "InSync")
            self.resync_run = run
            return run
        (log.debug if routine else log.info)("group %s: %s resync requested (%s)%s", self.record.id, mode, reason,
                 f", limited to {run.rate_limit} bytes/s" if run.rate_limit else "")
        self._resync_queued = run
        self._resync_wakeup.set()
        return run

    def _interrupted(self, run: ResyncRun | None) -> None:
        """A running *run* lost its link: it resumes when the link is back —
        or, when another run is queued already, that one does its work."""
        if run is None or not run.running:
            return
        queued = self._resync_queued
        if queued is None:
            run.restarts += 1
            run.started_at = None
            self._resync_queued = run
        else:
            queued.mode = stronger(queued.mode, run.mode)
            self._finish_run(run, f"superseded by run {queued.id}")

    def _finish_run(self, run: ResyncRun, outcome: str, *, verified: bool = False) -> None:
        run.finish(outcome, trio.current_time(), verified=verified)
        self._recent_runs.append(run)

    async def _ship_periodically(self) -> None:
        """Policy async: a quick resync every ``async_interval`` seconds
        ships what changed since the last one."""
        while True:
            await trio.sleep(self.timeouts.async_interval)
            if self.record.stale and self.state is R.OUT_OF_SYNC and self._resync_queued is None:
                self.request_resync("quick", reason="policy async: shipping what changed", routine=True)

    async def _resync_runner(self) -> None:
        """Run queued resyncs on this session, one at a time, each watched:
        one that makes no progress for ``resync_stall`` seconds is reported
        and restarted on a fresh session."""
        assert self.resync_hook is not None
        try:
            await self._run_resyncs(self.resync_hook)
        finally:
            self._run_ended.set()
            self._run_ended = trio.Event()

    async def _run_resyncs(self, hook: Callable[[ResyncRun], Awaitable[None]]) -> None:
        while True:
            if self._resync_queued is None:
                self._resync_wakeup = trio.Event()
                await self._resync_wakeup.wait()
                continue
            run, self._resync_queued = self._resync_queued, None
            if self.state is R.SPLIT_BRAIN and run.mode != "full":
                self._finish_run(run, f"refused: the group is SplitBrain ({self.record.stale_reason})")
                continue
            self.resync_run = run
            run.start(trio.current_time())
            try:
                await self._watched(run, hook)
            except tp.LinkDown as exc:
                log.warning("group %s: resync failed: %s", self.record.id, exc)
                if self.state is R.RESYNCING or self.conn is not None:
                    self.link_lost(f"resync abandoned: {exc}")
                self._interrupted(run)  # when the link was gone before the run began
                return
            except Exception as exc:
                # Never retry the same failing steps forever: the next resync compares everything.
                self.dirty.mark_everything("an internal error interrupted the last resync")
                self._dirty_changed = True
                self._finish_run(run, f"failed: internal error {exc!r}")
                raise
            if run.running:
                self._finish_run(run, "InSync", verified=run.mode == "checksum")
            self._run_ended.set()
            self._run_ended = trio.Event()

    async def resync_now(self, reason: str) -> None:
        """When connected to a stale replica: resync and wait until that
        ended — InSync, or failed with the link."""
        while self.conn is not None and self.record.stale and self.state is not R.SPLIT_BRAIN:
            run = self.request_resync("quick", reason=reason)
            while not run.finished and self.conn is not None:
                await self._run_ended.wait()
            if run.outcome != "InSync":
                return

    async def _watched(self, run: ResyncRun, hook: Callable[[ResyncRun], Awaitable[None]]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._resync_watchdog, run)
                await hook(run)
                nursery.cancel_scope.cancel()
        except* tp.LinkDown as group:
            raise group.exceptions[0] from None

    async def _resync_watchdog(self, run: ResyncRun) -> None:
        step = min(1.0, self.timeouts.resync_stall / 4)
        while True:
            await trio.sleep(step)
            idle = trio.current_time() - run.last_progress
            if idle > self.timeouts.resync_stall:
                log.warning("group %s: the %s resync made no progress for %.0fs; restarting it on a new session",
                            self.record.id, run.mode, idle)
                self.link_lost(f"the resync made no progress for {idle:.0f}s")  # cancels this session
                return

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

    async def _reader(self, conn: tp.Connection) -> None:
        idle = max(self.timeouts.ack, 3 * self.timeouts.ping)
        while True:
            event = await conn.receive_event(idle_timeout=idle)
            if isinstance(event, tp.Ack):
                self._acked(event.seq)
            elif isinstance(event, tp.Durable):
                self.durable_seq = max(self.durable_seq, event.seq)
                while self._not_durable and self._not_durable[0][0] <= event.seq:
                    self._not_durable.popleft()
            elif isinstance(event, (tp.Listing, tp.Digests, tp.DataMap)):
                slot = self._replies.get(event.seq)
                if slot is not None:
                    slot[1].append(event)
                    slot[0].set()
            elif isinstance(event, tp.Nack):
                if self.state is R.RESYNCING:
                    # The replica is not what the dirty set says: never retry the same steps forever.
                    self.dirty.mark_everything(f"the replica refused resync step {event.seq}: {event.message}")
                    self._dirty_changed = True
                raise tp.LinkDown(f"secondary could not apply seq {event.seq}: "
                                  f"{errno.errorcode.get(event.errno, event.errno)} {event.message}")
            elif isinstance(event, tp.Ping):
                conn.enqueue(tp.Pong(token=event.token))
            elif isinstance(event, tp.Close):
                if self._closing:
                    return
                raise tp.LinkDown("secondary closed the session")

    async def _pinger(self, conn: tp.Connection) -> None:
        while True:
            await trio.sleep(self.timeouts.ping)
            conn.enqueue(tp.Ping(token=0))

    async def _watchdog(self) -> None:
        step = min(0.25, self.timeouts.ack / 4)
        while True:
            await trio.sleep(step)
            if self._inflight and trio.current_time() - self._last_progress > self.timeouts.ack:
                raise tp.LinkDown(f"no acknowledgement for {self.timeouts.ack:g}s")

    # --- resync (the splitter side of it) -----------------------------------------

    def begin_resync(self, why: str) -> None:
        """Start sending a resync stream on the current connection; the
        replica's position becomes the session's."""
        if self.conn is None:
            raise tp.LinkDown("not connected")
        if self._seq_from_replica:
            self.next_seq = self.replica_seq + 1
            self.acked_seq = self.replica_seq
            self._seq_from_replica = False
        quiet = self.resync_run is not None and self.resync_run.routine
        if self.state is R.IN_SYNC:
            self._set_state(R.OUT_OF_SYNC, why, quiet=quiet)  # one step with the next: writes never see OutOfSync
        self._set_state(R.RESYNCING, why, quiet=quiet)

    def send(self, make: Callable[[int], tp.Operation], marks: tracking.Marks = NO_MARKS) -> Pending:
        """Queue a resync frame (nothing applied locally). Never checkpoints.

        *marks* say what becomes dirty again should the frame not reach the
        replica: the link is lost before its ack, the secondary crashes
        before making it durable, or this daemon crashes (the saved dirty
        set keeps them until the secondary reports them durable).

        Raises:
            LinkDown: the link was lost; the group is OutOfSync again.
        """
        if self.state is not R.RESYNCING or self.conn is None:
            raise tp.LinkDown(f"resync interrupted: {self.last_error or 'link lost'}")
        if self.resync_run is not None:
            self.resync_run.progressed(trio.current_time())
        self._dirty_changed = True  # what it cleans stays in the saved dirty set until durable there
        return self._queue_op(self.conn, make(self.next_seq), marks)

    def _queue_op(self, conn: tp.Connection, op: tp.Operation, marks: tracking.Marks = NO_MARKS) -> Pending:
        self.next_seq = op.seq + 1
        pending = Pending(op.seq, op.payload_size(), marks, op.BARRIER)
        if not self._inflight:
            self._last_progress = trio.current_time()
        self._inflight.append(pending)
        self._bytes_in_flight += pending.nbytes
        try:
            conn.enqueue(op)
        except tp.LinkDown as exc:
            self.link_lost(str(exc))
        return pending

    def ask(self, make: Callable[[int], tp.Operation]) -> Callable[[], Awaitable[tp.Frame]]:
        """Queue a resync question (ListDir, Checksum) now — in the caller's
        step — and return what awaits its reply.

        Raises:
            LinkDown: the link was lost (now or before the reply came).
        """
        event = trio.Event()
        replies: list[tp.Frame] = []
        seq = self.send(make).seq
        self._replies[seq] = (event, replies)

        async def reply() -> tp.Frame:
            try:
                await event.wait()
            finally:
                self._replies.pop(seq, None)
            if not replies:
                raise tp.LinkDown(f"resync interrupted: {self.last_error or 'no reply from the secondary'}")
            return replies[0]

        return reply

    def ask_listing(self, path: bytes) -> Callable[[], Awaitable[dict[bytes, tp.DirEntry]]]:
        """Ask for the replica's entries of directory *path* at this point
        of the operation stream — now, in the caller's step — and return
        what awaits them (all pages). Several directories can be asked at
        once: one round trip for all of them.

        Raises:
            LinkDown: the link was lost (now or before the reply came).
        """
        first = self.ask(lambda seq: tp.ListDir(seq=seq, path=path, after=b""))

        async def entries() -> dict[bytes, tp.DirEntry]:
            found: dict[bytes, tp.DirEntry] = {}
            reply = first
            while True:
                listing = await reply()
                assert isinstance(listing, tp.Listing)
                for entry in listing.items():
                    found[entry.name] = entry
                if not listing.more or not found:
                    return found
                after = max(found)
                reply = self.ask(lambda seq, after=after: tp.ListDir(seq=seq, path=path, after=after))

        return entries

    def _dirty_to_save(self) -> tracking.DirtySet:
        """The dirty set plus what frames not yet durable on the secondary
        would leave dirty: after a crash of this daemon, their fate is
        unknown. (Client changes in flight are in the activity log.)"""
        pending = [p.marks for p in self._inflight if p.marks] + [marks for _, marks in self._not_durable]
        if not pending:
            return self.dirty
        saved = tracking.DirtySet.from_payload(self.dirty.to_payload())
        for marks in pending:
            saved.apply(marks)
        return saved

    def save_dirty(self) -> None:
        """Persist the dirty set (atomically) if it changed."""
        if not self._dirty_changed:
            return
        try:
            self._groups.save_dirty(self.record, self._dirty_to_save())
        except OSError as exc:
            self._say_once("dirty", f"cannot save the dirty set ({exc}); retrying")
            return
        self._dirty_changed = False
        self._said.discard("dirty")
        self.activity.settle()

    async def throttle(self, max_bytes: int) -> None:
        """Wait until at most *max_bytes* of file data are in flight."""
        while self._bytes_in_flight > max_bytes and self._inflight:
            await self._inflight[0].done.wait()

    async def all_acked(self) -> None:
        """Wait until everything sent so far is acknowledged (not what
        clients send meanwhile: under semi-sync that may never pause).

        Raises:
            LinkDown: the link was lost first.
        """
        if self._inflight:
            last = self._inflight[-1]
            await last.done.wait()
            if not last.ok:
                raise tp.LinkDown(f"resync interrupted: {self.last_error}")

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
        if self.state is not R.RESYNCING:
            raise tp.LinkDown(f"resync interrupted: {self.last_error}")
        if self.dirty:
            return False
        self._dirty_changed = True
        self.save_dirty()
        if self._dirty_changed:
            raise tp.LinkDown("cannot save the dirty set; the resync is retried with the next session")
        before = (self.record.stale_reason, self.record.last_seq, list(self.record.generations))
        self.record.stale = False
        self.record.stale_reason = ""
        self.record.last_seq = self.acked_seq
        generation = self.record.new_generation()  # both sides meet again
        try:
            self._groups.save(self.record)
        except OSError as exc:
            self.record.stale = True
            self.record.stale_reason, self.record.last_seq, self.record.generations = before
            raise tp.LinkDown(f"cannot record that the replica is in sync ({exc}); the resync is retried with "
                              f"the next session") from None
        self._stale_unsaved = False
        self._groups.reserve()  # given up when the disk was full, perhaps
        self._lag_since = None
        self._set_state(R.IN_SYNC, "resync complete", quiet=self.resync_run is not None and self.resync_run.routine)
        assert self.conn is not None
        self._send_generation(self.conn, generation)
        return True

    def _send_generation(self, conn: tp.Connection, generation: bytes) -> None:
        self._catch_up_generation = False
        self._queue_op(conn, tp.Generation(seq=self.next_seq, generation=generation))

    # --- shutdown ----------------------------------------------------------------

    async def drain_and_close(self, timeout: float) -> None:  # noqa: ASYNC109 - the bound is in the message
        """Wait (bounded) for what is in flight, say goodbye, and persist the
        group as cleanly shut down."""
        with trio.move_on_after(timeout):
            while self._inflight:
                await self._inflight[-1].done.wait()
        if self._inflight:
            self.link_lost(f"unacknowledged after {timeout:g}s at shutdown")
        self._closing = True
        conn = self.conn
        if conn is not None:
            with trio.move_on_after(2):
                try:
                    await conn.send(tp.Close(last_seq=self.acked_seq))
                except (tp.LinkDown, tp.ProtocolError):
                    pass
        if self._session_scope is not None:
            self._session_scope.cancel()
        self.record.last_seq = self.acked_seq
        self.record.clean_shutdown = True
        self._dirty_changed = True
        self.save_dirty()
        if self._dirty_changed:
            self.record.clean_shutdown = False  # the next mount falls back on the activity log
        try:
            self._groups.save(self.record)
        except OSError as exc:
            log.error("group %s: cannot save the group's state at shutdown (%s); the next mount treats it as "
                      "a crash and resyncs what the activity log names", self.record.id, exc)
            return
        log.info("group %s: shut down cleanly at seq %d (%s)", self.record.id, self.record.last_seq,
                 self.state.value)

    def _lag_seconds(self) -> float:
        """How long the replica has been missing changes made here."""
        now = trio.current_time()
        if self.record.stale and self._lag_since is not None:
            return round(now - self._lag_since, 3)
        return round(now - self._last_progress, 3) if self._inflight else 0.0

    def statistics(self) -> GroupStatus:
        dirty_bytes = self.dirty.dirty_bytes
        run = self.resync_run
        progress = run.snapshot(dirty_bytes, trio.current_time(), self.dirty.dir_count) if run is not None else None
        running = progress if progress is not None and progress.running else None
        queued = self._resync_queued
        return GroupStatus(
            id=self.record.id,
            path="/" + self.record.path,
            state=self.state.value,
            policy=self.record.policy,
            secondary=self.record.secondary,
            connected=self.conn is not None,
            last_acked_seq=self.acked_seq,
            ops_in_flight=len(self._inflight),
            lag_bytes=self._lag_bytes() + (dirty_bytes if self.record.stale else 0),
            lag_seconds=self._lag_seconds(),
            bytes_in_flight=self._bytes_in_flight,
            dirty_bytes=dirty_bytes,
            bytes_remaining=running.bytes_remaining if running else dirty_bytes,
            bytes_per_second=progress.bytes_per_second if progress else 0,
            eta_seconds=running.eta_seconds if running else None,
            percent=running.percent if running else (100.0 if self.state is R.IN_SYNC else 0.0),
            resync=progress,
            resync_queued=QueuedRun(queued.id, queued.mode, queued.restarts) if queued is not None else None,
            resync_recent=tuple(EndedRun(r.id, r.mode, r.outcome, r.verified) for r in self._recent_runs),
            resync_bytes_sent=self.resync_bytes,
            last_resync_seconds=round(self.last_resync_seconds, 3),
            generation=self.record.generations[-1],
            stale_reason=self.record.stale_reason if self.record.stale else "",
            last_error=self.last_error,
            internal_errors=self.internal_errors,
        )
