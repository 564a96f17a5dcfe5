"""The splitter: one consistency group's relationship with its secondary.

How this works: ``split()`` is a plain function. It assigns the group's next
sequence number, applies the mutation to the primary store and queues the
frame for the secondary, with no checkpoint in between — so the local order
and the sequence order are one order (write-order fidelity). It returns a
``Pending`` the FUSE handler awaits; acks are cumulative, so many operations
are in flight at once. ``serve()`` owns the link: it connects, reads acks,
pings an idle link, and declares the link lost when the connection drops or
no ack arrives within the ack timeout while something is in flight.

Policies (issue #3 scope):
- ``sync``: with no usable link, mutations are applied locally only; the
  durable ``stale`` mark is written *before* the first such mutation, and the
  group is OutOfSync until a resync.
- ``strict``: a mutation that cannot be replicated fails with EIO before it
  is applied locally; one in flight when the link fails returns EIO too
  (it was applied locally, and the group is marked stale).

Caveats:
- A stale group stays OutOfSync after reconnecting: only a resync (dirty
  tracking) may bring it back to InSync.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio

import tracking
import transport as tp

from ._config import GroupRecord, GroupStore
from ._state import RelationshipState, check_transition

log = logging.getLogger(__name__)
R = RelationshipState
STABLE_SESSION = 10.0
DIRTY_SAVE_INTERVAL = 1.0
NO_MARKS = tracking.Marks()


@dataclass(slots=True)
class Pending:
    """A replicated operation waiting for its ack."""

    seq: int
    nbytes: int
    marks: tracking.Marks = NO_MARKS
    done: trio.Event = field(default_factory=trio.Event)
    ok: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    ack: float = 10.0
    ping: float = 2.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0


class Relationship:
    """A group, its secondary, its state and its in-flight operations."""

    def __init__(self, record: GroupRecord, groups: GroupStore, key: bytes,
                 timeouts: Timeouts = Timeouts()) -> None:
        self.record = record
        self._groups = groups
        self._key = key
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
        self._listings: dict[int, tuple[trio.Event, list[tp.Listing]]] = {}
        self.resync_hook: Callable[[], Awaitable[None]] | None = None
        self.last_error = ""

    # --- the write path ----------------------------------------------------------

    def split(self, apply: Callable[[int | None], tp.Operation | None],
              marks: tracking.Marks = NO_MARKS) -> Pending | None:
        """Apply one mutation locally and queue it for the secondary under
        the next sequence number — when the group is InSync, or Resyncing and
        *marks* touch nothing still dirty. Otherwise the change is local only
        and *marks* go into the dirty set.

        *apply(seq)* does the local change and returns the frame to send, or
        None when the change has nothing to replicate; it gets ``None`` when
        the change is local only. It must not checkpoint.

        Returns:
            The Pending to await, or None when nothing was sent.
        Raises:
            OSError: the local change failed (no sequence number is used), or
                EIO under ``strict`` when the group cannot replicate.
        """
        conn = self.conn
        if conn is not None and (self.state is R.IN_SYNC or
                                 (self.state is R.RESYNCING and not self.dirty.blocks(marks))):
            self._activate(marks, self.next_seq)
            op = apply(self.next_seq)
            if op is None:
                return None
            return self._queue_op(conn, op, marks)
        if self.record.policy == "strict":
            raise OSError(errno.EIO, f"group {self.record.id} is {self.state.value}; policy strict refuses "
                                     f"changes that cannot be replicated")
        if not self.record.stale:  # pragma: no cover - every way out of InSync marks stale first
            self._mark_stale("change made without a link")
        self._activate(marks, tracking.LOCAL_SEQ)
        apply(None)
        self.dirty.apply(marks)
        self._dirty_changed = True
        return None

    def _activate(self, marks: tracking.Marks, seq: int) -> None:
        """Make *marks* durable in the activity log before the change is
        applied, when they reach an extent not already active."""
        if marks and self.activity.touch(marks, seq, self.durable_seq):
            try:
                self._activity_file.save(self.activity.payload())
            except OSError as exc:
                log.error("group %s: cannot save the activity log: %s", self.record.id, exc)

    async def wait(self, pending: Pending | None) -> None:
        """Wait until *pending* is acknowledged.

        Raises:
            OSError(EIO): under ``strict``, when the link was lost first.
        """
        if pending is None:
            return
        await pending.done.wait()
        if not pending.ok and self.record.policy == "strict":
            raise OSError(errno.EIO, "the secondary did not acknowledge the change (policy strict)")

    # --- state -----------------------------------------------------------------

    def _set_state(self, new: RelationshipState, why: str) -> None:
        if new is self.state:
            return
        check_transition(self.state, new)
        log.info("group %s: %s -> %s (%s)", self.record.id, self.state.value, new.value, why)
        self.state = new

    def _mark_stale(self, reason: str) -> None:
        """Durably record that the replica may lack changes. Written before
        any unreplicated change is applied locally."""
        if self.record.stale:
            return
        self.record.stale = True
        self.record.stale_reason = reason
        self.record.last_seq = self.acked_seq
        try:
            self._groups.save(self.record)
        except OSError as exc:
            log.error("group %s: cannot record that the replica is stale: %s", self.record.id, exc)

    def link_lost(self, reason: str) -> None:
        """The secondary is unreachable: mark stale, go OutOfSync, fail every
        operation in flight and drop the connection. Never checkpoints."""
        self.last_error = reason
        self._mark_stale(f"link lost: {reason}")
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
        for slot in self._listings.values():
            slot[0].set()
        self._listings.clear()
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
        for listed, (event, _) in self._listings.items():
            if listed <= seq:
                event.set()  # acked without its Listing: list_dir raises instead of waiting forever

    # --- the link --------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and authenticate once; on success the group is InSync (or
        OutOfSync, connected, when the replica is stale).

        Raises:
            AuthenticationError: the secondary does not hold our key.
            LinkDown: it could not be reached.
        """
        conn, welcome = await tp.open_primary_connection(
            self.host, self.port, self._key, self.record.group_id, self.timeouts.connect)
        log.info("group %s: connected to %s and authenticated; replica at seq %d, primary at seq %d",
                 self.record.id, self.record.secondary, welcome.last_seq, self.acked_seq)
        self.conn = conn
        self.last_error = ""
        self.replica_seq = welcome.last_seq
        behind = self.durable_seq <= welcome.last_seq < self.acked_seq
        if behind and not self.record.stale:
            self._mark_stale(f"the secondary came back at seq {welcome.last_seq}, behind {self.acked_seq}")
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
            reason = f"replica at seq {welcome.last_seq}, primary acknowledged {self.acked_seq}"
            self.dirty.mark_everything(reason)
            self._dirty_changed = True
            self._mark_stale(reason)
            self.save_dirty()
        if self.record.stale:
            self._set_state(R.OUT_OF_SYNC, f"replica needs a resync: {self.record.stale_reason}")
        else:
            self.next_seq = welcome.last_seq + 1
            self.acked_seq = welcome.last_seq
            self._set_state(R.IN_SYNC, "replica matches the primary")

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
        while True:
            await trio.sleep(DIRTY_SAVE_INTERVAL)
            self.save_dirty()

    async def _keep_linked(self) -> None:
        backoff = self.timeouts.backoff_min
        while not self._closing:
            resync = False
            if self.conn is None:
                try:
                    await self.connect()
                    resync = self.record.stale and self.resync_hook is not None
                except tp.AuthenticationError as exc:
                    self.last_error = str(exc)
                    log.error("group %s: %s", self.record.id, exc)
                except tp.LinkDown as exc:
                    if str(exc) != self.last_error:
                        log.info("group %s: reconnect failed: %s", self.record.id, exc)
                    self.last_error = str(exc)
                if self.conn is None:
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, self.timeouts.backoff_max)
                    continue
            started = trio.current_time()
            try:
                await self._run_session(self.conn, resync)
            except Exception as exc:  # a bug must cost a reconnect, not the mount
                log.exception("group %s: internal error in the replication session", self.record.id)
                self.link_lost(f"internal error: {exc!r}")
            if trio.current_time() - started > STABLE_SESSION:
                backoff = self.timeouts.backoff_min
            elif not self._closing:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.timeouts.backoff_max)

    async def _run_session(self, conn: tp.Connection, resync: bool = False) -> None:
        try:
            with trio.CancelScope() as self._session_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.serve_sender)
                    nursery.start_soon(self._pinger, conn)
                    nursery.start_soon(self._watchdog)
                    if resync:
                        nursery.start_soon(self._resync)
                    await self._reader(conn)
                    nursery.cancel_scope.cancel()
        except* tp.LinkDown as group:
            self.link_lost(str(group.exceptions[0]))
        finally:
            self._session_scope = None
            if self.conn is conn and not self._closing:
                self.link_lost("session ended")
            await conn.aclose()

    async def _resync(self) -> None:
        assert self.resync_hook is not None
        try:
            await self.resync_hook()
        except tp.LinkDown as exc:
            log.warning("group %s: resync failed: %s", self.record.id, exc)
            if self.state is R.RESYNCING:
                self.link_lost(f"resync abandoned: {exc}")
        except Exception:
            # Never retry the same failing steps forever: the next resync compares everything.
            self.dirty.mark_everything("an internal error interrupted the last resync")
            self._dirty_changed = True
            raise

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
            elif isinstance(event, tp.Listing):
                slot = self._listings.get(event.seq)
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
        self.next_seq = self.replica_seq + 1
        self.acked_seq = self.replica_seq
        self._set_state(R.RESYNCING, why)

    def send(self, make: Callable[[int], tp.Operation]) -> Pending:
        """Queue a resync frame (nothing applied locally). Never checkpoints.

        Raises:
            LinkDown: the link was lost; the group is OutOfSync again.
        """
        if self.state is not R.RESYNCING or self.conn is None:
            raise tp.LinkDown(f"resync interrupted: {self.last_error or 'link lost'}")
        return self._queue_op(self.conn, make(self.next_seq))

    def _queue_op(self, conn: tp.Connection, op: tp.Operation, marks: tracking.Marks = NO_MARKS) -> Pending:
        self.next_seq = op.seq + 1
        pending = Pending(op.seq, op.payload_size(), marks)
        if not self._inflight:
            self._last_progress = trio.current_time()
        self._inflight.append(pending)
        self._bytes_in_flight += pending.nbytes
        try:
            conn.enqueue(op)
        except tp.LinkDown as exc:
            self.link_lost(str(exc))
        return pending

    async def list_dir(self, path: bytes) -> dict[bytes, tp.DirEntry]:
        """The replica's entries of directory *path*, at this point of the
        operation stream (all pages).

        Raises:
            LinkDown: the link was lost meanwhile.
        """
        entries: dict[bytes, tp.DirEntry] = {}
        after = b""
        while True:
            event = trio.Event()
            pending = self.send(lambda seq, after=after: tp.ListDir(seq=seq, path=path, after=after))
            replies: list[tp.Listing] = []
            self._listings[pending.seq] = (event, replies)
            await event.wait()
            self._listings.pop(pending.seq, None)
            if not replies:
                raise tp.LinkDown(f"resync interrupted: {self.last_error or 'link lost'}")
            for entry in replies[0].items():
                entries[entry.name] = entry
            if not replies[0].more or not entries:
                return entries
            after = max(entries)

    def save_dirty(self) -> None:
        """Persist the dirty set (atomically) if it changed."""
        if not self._dirty_changed:
            return
        try:
            self._groups.save_dirty(self.record, self.dirty)
            self._dirty_changed = False
            self.activity.settle()
        except OSError as exc:
            log.error("group %s: cannot save the dirty set: %s", self.record.id, exc)

    async def throttle(self, max_bytes: int) -> None:
        """Wait until at most *max_bytes* of file data are in flight."""
        while self._bytes_in_flight > max_bytes and self._inflight:
            await self._inflight[0].done.wait()

    async def finish_resync(self) -> bool:
        """Wait for every resync frame's ack; then, if nothing became dirty
        meanwhile, the replica is current: clear the stale mark durably and
        go InSync (the check and the switch are one step).

        Returns:
            False when more became dirty: run another pass.
        Raises:
            LinkDown: the link was lost before everything was acknowledged.
        """
        while self._inflight:
            last = self._inflight[-1]
            await last.done.wait()
            if not last.ok:
                raise tp.LinkDown(f"resync interrupted: {self.last_error}")
        if self.state is not R.RESYNCING:
            raise tp.LinkDown(f"resync interrupted: {self.last_error}")
        if self.dirty:
            return False
        self.record.stale = False
        self.record.stale_reason = ""
        self.record.last_seq = self.acked_seq
        self._dirty_changed = True
        self.save_dirty()
        self._groups.save(self.record)
        self._set_state(R.IN_SYNC, "resync complete")
        return True

    # --- shutdown ----------------------------------------------------------------

    async def drain_and_close(self, timeout: float) -> None:
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
        self._groups.save(self.record)
        log.info("group %s: shut down cleanly at seq %d (%s)", self.record.id, self.record.last_seq,
                 self.state.value)

    def statistics(self) -> dict[str, Any]:
        return {
            "id": self.record.id,
            "path": "/" + self.record.path,
            "state": self.state.value,
            "policy": self.record.policy,
            "secondary": self.record.secondary,
            "connected": self.conn is not None,
            "last_acked_seq": self.acked_seq,
            "ops_in_flight": len(self._inflight),
            "bytes_in_flight": self._bytes_in_flight,
            "dirty_bytes": self.dirty.dirty_bytes,
            "resync_bytes_sent": self.resync_bytes,
            "last_resync_seconds": round(self.last_resync_seconds, 3),
            "stale_reason": self.record.stale_reason if self.record.stale else "",
            "last_error": self.last_error,
        }
