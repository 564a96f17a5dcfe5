"""The secondary daemon: one replica per consistency group, each a plain
tree under ``STORE/<group-uuid>/``, each applying its group's operations
strictly in sequence order.

How this works: a connection authenticates (``accept_secondary_session``:
mutual TLS first when the daemon has a certificate, then the pre-shared key),
names its group, and gets the replica's last applied sequence number in the
Welcome. Operations are applied as they are decoded, each through its row
of ``_apply``'s table (on a ``Tree`` confined to the replica root); all
frames already received are applied before one cumulative Ack is sent, so
acks are pipelined and batched. A Fsync barrier is made durable (in a
worker thread) before it is acked. An
operation that fails is Nacked and the session ends: applying anything after
it would break write-order fidelity.

One session per replica: a newcomer for a group that has one is let in only
if that session is dead. The holder is probed (a Ping it must answer, while
anything it sends counts as a sign of life); if it ends or stays silent for
PROBE_TIMEOUT it is replaced, else the newcomer is refused with an Error
saying who holds the group. So a primary that comes back after a crash or a
cut link (its old connection half-open here) gets in within that bound,
while a second primary claiming the same group (a copied store) never
drops the one that holds it.

Durability of the position: ``last_seq`` is written to
``.fsrep/replicas/<id>.json`` only after ``syncfs`` has made the data up to
it durable — periodically, at session end and at shutdown — so the saved
position never runs ahead of the data. It may lag behind; the primary then
sees a mismatch and resyncs instead of trusting it. The replica's pseudo
snapshots (``_replica_snapshots``) are saved between the two, to
``<id>.snapshots`` (a journal appended with what they recorded since the
save before; now and then the whole chain), and the position file lists
the ones that save held: after a crash the replica reports only snapshots
its data reached, each with every change applied up to the position. One
checkpoint writes from a worker thread at a time, in the order they were
captured: a record of the snapshots holds only what the one before lacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import math
import os
import secrets
import signal
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import tracking
import transport as tp

from . import _failover as failover
from . import _notify as notify
from . import _replica_snapshots as replica_snapshots
from ._accept import Handshake, Handshakes, serve_listeners
from ._apply import apply
from ._clone_backups import empty
from ._commands import dispatch
from ._config import META_DIR, ConfigError, Reserve
from ._control import serve_control
from ._failover import Promoted
from ._limits import raise_open_file_limit
from ._logs import reopen_logs, setup_logging
from ._metrics import of_secondary, open_metrics, serve_metrics
from ._pipeline import Position
from ._registry import PROMOTED, REPLICA_KIND, holds_primary_state, registry_dir, save_position
from ._secondary_commands import SECONDARY_COMMANDS
from ._store import StoreLock, check_directory
from ._tree import Tree
from ._undo import UNDO_LIMIT, UndoLog

if TYPE_CHECKING:
    from ._arrivals import Arrivals

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 2.0
HANDSHAKE_TIMEOUT = 10.0  # for everything before authentication, however slowly the peer sends
IDLE_TIMEOUT = 30.0
KEEPALIVE = 1.0  # seconds between the Pongs a session sends while a long change is applied
ACK_AT_LEAST_EVERY = 0.5  # seconds a batch of frames is applied before what is done so far is acknowledged
# A live primary answers a probe within a round trip (it pings every 2 s besides); short enough that a primary
# whose old session is dead gets in within its own handshake timeout (5 s).
PROBE_TIMEOUT = 2.0


class ReplicaRefused(Exception):
    """Raised when a group's replica takes no changes: it was promoted on
    this host (fenced), or its directory holds a primary store's state. The
    message, for the connecting primary's operator, says what to do."""


@dataclass(slots=True)
class Probe:
    """A question to the session holding a replica: are you alive?"""

    token: int
    settled: trio.Event = field(default_factory=trio.Event)  # answered, or the session ended
    answered: bool = False


@dataclass(frozen=True, slots=True)
class Saving:
    """What one checkpoint writes, captured between two frames: the
    position, and the snapshots as they stood then (what the file lacks
    of their chain, None when it holds it already)."""

    number: int  # captures of one replica count up: an older one is never written over a newer
    last_seq: int
    generations: list[str]
    chain: replica_snapshots.Capture | None
    snapshots: list[list[Any]]


@dataclass(slots=True)
class Replica:
    id: str
    tree: Tree
    state_file: Path
    last_applied: int
    last_saved: int
    saved: replica_snapshots.SavedChain  # where the snapshots are saved
    generations: list[bytes] = field(default_factory=list)  # the primary's, oldest first
    snapshots: replica_snapshots.Chain = field(default_factory=replica_snapshots.new_chain)  # oldest first
    session: trio.CancelScope | None = None
    session_done: trio.Event | None = None
    conn: tp.Connection | None = None
    heard: float = -math.inf  # when the session last received a frame
    busy: bool = False  # the session is applying an operation in a thread (and reads nothing meanwhile)
    probe: Probe | None = None
    claimant: str | None = None  # a newcomer deciding whether the session is dead
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_order: trio.Lock = field(default_factory=trio.Lock)  # one checkpoint from a worker thread at a time
    captured: int = 0  # the number of the last Saving captured
    written: int = 0  # and of the last one written
    replaced: bool = False  # its directory was replaced: nothing more of it is saved
    answering: tuple[str, tracking.PathChanges] | None = None  # what a paged SnapshotChanges answer reads
    undo: UndoLog | None = None  # what a resync overwrites (the daemon's replicas have one)
    staging: Path | None = None  # where the primary stages clone backups for a resync (``_clone_backups``)
    frames_applied: int = 0  # changes applied since the daemon opened the replica (``--metrics``)
    bytes_applied: int = 0  # and their file data

    def root_replaced(self) -> bool:
        """Whether the replica's directory was removed or replaced since
        it was opened (its path no longer names the directory held open)."""
        try:
            now = os.stat(self.tree.root)
        except OSError as exc:
            return exc.errno == errno.ENOENT  # any other failure cannot tell; applying will
        held = os.fstat(self.tree.root_fd)
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    @property
    def position(self) -> Position:
        """What the replica holds: the last change applied, in its generation."""
        return Position(self.generations[-1].hex() if self.generations else "none", self.last_applied)

    def before_apply(self, op: tp.Operation) -> None:
        """Called by ``_apply.apply`` just before each frame that changes
        the replica: while a resync writes, the undo log records what *op*
        is about to overwrite (``_undo``).

        Raises:
            OSError: it cannot (EDQUOT: the log is full); *op* is refused.
        """
        if isinstance(op, tp.ResyncBegin) and self.staging is not None:
            empty(self.staging)  # each run stages its clone backups anew
        undo = self.undo
        if undo is None:
            return
        if isinstance(op, tp.ResyncBegin):
            if undo.open and undo.ended is None:
                return  # a resync started again: the log still rolls back to where the first began
            self.tree.sync()  # the state it rolls back to is on disk
            undo.begin({"last_seq": self.last_applied, "generations": [g.hex() for g in self.generations],
                        "snapshots": replica_snapshots.listed(self.snapshots)})
            log.info("group %s: a resync begins at %s; the undo log keeps what it overwrites until it ends",
                     self.id, self.position)
        elif isinstance(op, tp.Generation):
            undo.end(op.seq)
        else:
            undo.before(op)

    def divergent_dir(self) -> Path:
        """Where a new copy of the replica's side of a split brain goes:
        the secondary store's ``.fsrep/divergent/<id>/<time>/``."""
        return self.state_file.parent.parent / "divergent" / self.id / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    def capture(self) -> Saving | None:
        """What a checkpoint writes, as it stands now; None when nothing
        changed since the last, or while a frame is applied in a worker
        thread (the next checkpoint saves it). Call it from the thread that
        applies frames: the chain is read here, not while it changes."""
        chain = self.snapshots
        if self.busy or (self.last_applied == self.last_saved and not chain.changed):
            return None
        self.captured += 1
        return Saving(self.captured, self.last_applied, [g.hex() for g in self.generations],
                      self.saved.capture(chain), replica_snapshots.listed(chain))

    def checkpoint(self, saving: Saving | None = None) -> None:
        """Make the data durable, then the snapshots, then record the
        position (never the other way round): *saving*, else what
        ``capture`` finds now.

        Raises:
            OSError: a write failed; the next checkpoint writes it all again.
        """
        with self.lock:
            if saving is None:
                saving = self.capture()
            if saving is None or self.replaced:
                return
            if saving.number < self.written:
                return  # the newer was captured while this was unwritten: it holds the snapshots whole
            try:
                if self.undo is not None:
                    self.undo.flush()  # what undoes a change is on disk before the change is
                self.tree.sync()
                if saving.chain is not None:
                    self.saved.write(saving.chain)
                # Only now: a record the position relies on is never the torn end of the journal.
                save_position(self.state_file, self.id, saving.last_seq, saving.generations, saving.snapshots)
                if self.undo is not None:
                    self.undo.release_upto(saving.last_seq)  # the resync it kept the undo of is durable
            except BaseException:
                self.snapshots.changed = True
                raise
            self.written, self.last_saved = saving.number, saving.last_seq

    async def checkpoint_in_thread(self) -> None:
        """``checkpoint`` of what the replica holds now, written from a
        worker thread once the one before is (the snapshots' records must
        be written in the order they were captured)."""
        async with self.in_order:
            saving = self.capture()
            if saving is not None:
                await trio.to_thread.run_sync(self.checkpoint, saving)


class Secondary:
    def __init__(self, store: Path, key: bytes, tls: ssl.SSLContext | None = None,
                 undo_limit: int = UNDO_LIMIT, *, arrivals: Arrivals | None = None) -> None:
        self.store = store
        self.undo_limit = undo_limit
        # A primary's incoming moves (``_arrivals``): Adopt is answered there, each session's end is told, and the
        # replicas keep no undo log (a move cut short is not resumed: its copy goes).
        self.arrivals = arrivals
        self.space = Reserve(store)
        self.key = key
        self.tls = tls  # server_context: every peer must pass mutual TLS first
        self.replicas: dict[str, Replica] = {}
        self.registry = registry_dir(store)
        self.registry.mkdir(parents=True, exist_ok=True)
        self.space.hold()
        self.handshakes = Handshakes()
        self.promoting: set[str] = set()  # groups whose replica is being promoted: no session may open them

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept primaries on *listeners* until cancelled."""
        await serve_listeners(self.handle, listeners, self.handshakes, task_status=task_status)

    def replica(self, group_id: bytes) -> Replica:
        """Open (or create) the replica of a group.

        A replica whose directory was removed (or replaced) behind the
        daemon's back is gone: it starts again empty at seq 0, so the
        primary sees a fresh replica and sends it a baseline. Its position
        is reset before the directory is made again, so a crash in between
        cannot leave an empty tree that claims an old position."""
        gid = str(uuid.UUID(bytes=group_id))
        if gid in self.promoting:
            raise ReplicaRefused(f"group {gid} is being promoted on this host: its replica takes no more changes")
        replica = self.replicas.get(gid)
        if replica is not None and (replica.session is not None or not replica.root_replaced()):
            return replica  # one still in a session is reopened when that session has ended
        state_file = self.registry / f"{gid}.json"
        saved = replica_snapshots.SavedChain(state_file.with_suffix(".snapshots"))
        root = self.store / gid
        try:
            state = tracking.load_state(state_file, REPLICA_KIND)
            promoted = state.get(PROMOTED)
            if promoted is not None:
                raise ReplicaRefused(_fenced(gid, promoted))
            _check_not_a_primary(root, gid)
            last = int(state["last_seq"])
            generations = [bytes.fromhex(g) for g in state.get("generations", [])]
            chain = saved.load(state.get("snapshots", []), last, gid)
        except tracking.StateMissing:
            _check_not_a_primary(root, gid)
            last, generations, chain = 0, [], replica_snapshots.new_chain()
            root.mkdir(mode=0o755, exist_ok=True)
            save_position(state_file, gid, 0, [], [])
            log.info("new replica for group %s at %s", gid, root)
        emptied = replica is not None or not root.is_dir()
        if emptied:
            log.warning("group %s: the replica directory %s was removed or replaced (the replica was at seq %d); "
                        "starting an empty replica at seq 0, which the primary fills with a baseline", gid, root, last)
            if replica is not None:
                with replica.lock:  # nothing of the old one is saved after this
                    replica.replaced = True
                    replica.tree.close()
            last, generations = 0, []
            save_position(state_file, gid, 0, [], [])
            chain = saved.empty()
            root.mkdir(mode=0o755, exist_ok=True)
        tree = Tree(root)
        staging = self.store / META_DIR / "clones" / gid  # made by the first backup a resync stages
        empty(staging)
        tree.stage_in(staging)
        undo = None
        if self.arrivals is None:
            undo = UndoLog(self.store / META_DIR / "undo" / gid, tree, self.undo_limit, self.space)
            if emptied:
                undo.release()  # the tree it would roll back is gone
            elif undo.load() and undo.base is not None:
                undo.release_upto(last)
            if undo.open and undo.base is not None:
                log.info("group %s: an undo log is open since seq %s (a resync did not complete); the resync goes "
                         "on", gid, undo.base.get("last_seq"))
        replica = Replica(gid, tree, state_file, last, last, saved, generations, chain, undo=undo, staging=staging)
        self.replicas[gid] = replica
        return replica

    async def promote(self, gid: str, *, force: bool) -> Promoted:
        """Stop applying group *gid* and make its replica the group's
        primary store (``_failover.promote``). A live session of its
        primary is refused unless *force*, which ends it.

        Raises:
            ConfigError: it cannot (the message says why).
        """
        if gid in self.promoting:
            raise ConfigError(f"group {gid} is being promoted already")
        self.promoting.add(gid)  # from here on no session opens the replica
        cut_off = ""
        try:
            replica = self.replicas.get(gid)
            if replica is not None:
                cut_off = await self._end_session(replica, force)
                try:
                    await replica.checkpoint_in_thread()
                except OSError as exc:
                    raise ConfigError(f"cannot save the replica's position ({exc.strerror or exc}); free space "
                                      f"in {self.registry} and promote again") from None
                with replica.lock:  # nothing of it is saved after this
                    replica.replaced = True
                    replica.tree.close()
                del self.replicas[gid]
            promoted = await trio.to_thread.run_sync(failover.promote, self.store, gid)
        finally:
            self.promoting.discard(gid)
        return dataclasses.replace(promoted, cut_off=cut_off)

    async def _end_session(self, replica: Replica, force: bool) -> str:
        """End the replica's session for a promote (a live one only with
        *force*); who held it ("" if nobody did)."""
        if replica.session is None or replica.session_done is None:
            return ""
        holder = replica.conn.peer if replica.conn is not None else "an earlier connection"
        if await self._holder_is_live(replica) and not force:
            raise ConfigError(f"group {replica.id}: its primary {holder} is connected and alive; promoting now "
                              f"would leave two primaries — stop that primary first, or give --force to cut it off")
        log.warning("group %s: ending the session from %s to promote the replica", replica.id, holder)
        replica.session.cancel()
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            await replica.session_done.wait()
        if not replica.session_done.is_set():
            raise ConfigError(f"group {replica.id}: the session from {holder} did not end within "
                              f"{HANDSHAKE_TIMEOUT:g}s; try again")
        return holder

    async def handle(self, stream: trio.SocketStream, handshake: Handshake) -> None:
        """One connection; a bug here drops this peer, never the server."""
        try:
            await self._handle(stream, handshake)
        except Exception:
            log.exception("internal error serving %s; connection dropped", _peer_name(stream))
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _authenticate(self, stream: trio.SocketStream, handshake: Handshake,
                            peer: str) -> tuple[tp.Connection, bytes] | None:
        """The authenticated connection and its group id; None if the peer
        failed (tallied) or its slot went to a newer connection."""
        with handshake:
            try:
                return await tp.accept_secondary_session(stream, self.key, peer, HANDSHAKE_TIMEOUT, tls=self.tls)
            except tp.LinkDown as exc:
                self.handshakes.failed(peer, str(exc))
        return None

    async def _handle(self, stream: trio.SocketStream, handshake: Handshake) -> None:
        peer = _peer_name(stream)
        authenticated = await self._authenticate(stream, handshake, peer)
        if authenticated is None:
            return
        conn, group_id = authenticated
        try:
            replica = self.replica(group_id)
        except ReplicaRefused as exc:
            log.warning("group %s: refusing %s: %s", uuid.UUID(bytes=group_id), peer, exc)
            await conn._fail(str(exc))
            return
        except (tracking.StateError, OSError, KeyError, ValueError, TypeError) as exc:
            log.error("cannot open replica for %s: %s", peer, exc)
            await conn._fail(f"secondary cannot open the replica: {exc}")
            return
        if replica.session is not None or replica.claimant is not None:
            refusal = await self._take_over(replica, peer)
            if refusal:
                await conn._fail(refusal)
                return
        done = trio.Event()
        with trio.CancelScope() as scope:
            replica.session, replica.session_done, replica.conn = scope, done, conn
            try:
                await self._session(conn, replica, peer)
            finally:
                # Whatever ended the session (a failed write, a full disk), the replica must be
                # ready for the next one: the position is saved if it can be, the slot freed always.
                try:
                    with trio.CancelScope(shield=True):
                        await conn.aclose()
                        await replica.checkpoint_in_thread()
                except OSError as exc:
                    log.error("group %s: cannot save the replica position at the end of the session: %s; "
                              "the primary resends what it finds missing", replica.id, exc)
                finally:
                    if replica.session is scope:
                        replica.session = replica.conn = None
                    if replica.probe is not None:
                        replica.probe.settled.set()
                    done.set()
                    if self.arrivals is not None:
                        self.arrivals.ended(self, replica)

    async def _take_over(self, replica: Replica, peer: str) -> str:
        """End the replica's session if it is dead, so *peer* may have the
        replica; else say why *peer* is refused."""
        if replica.claimant is not None:
            return f"group {replica.id}: {replica.claimant} is claiming it already; refusing"
        holder = replica.conn.peer if replica.conn is not None else "an earlier connection"
        replica.claimant = peer
        try:
            if await self._holder_is_live(replica):
                return f"group {replica.id} is held by a live session from {holder}; refusing"
            if replica.session is not None:
                log.warning("group %s: the session from %s is dead (silent for %gs); %s replaces it", replica.id,
                            holder, PROBE_TIMEOUT, peer)
                replica.session.cancel()
            if replica.session_done is not None:
                with trio.move_on_after(HANDSHAKE_TIMEOUT):
                    await replica.session_done.wait()
                if not replica.session_done.is_set():
                    log.error("group %s: the old session did not end within %gs; refusing %s", replica.id,
                              HANDSHAKE_TIMEOUT, peer)
                    return "the replica's previous session has not ended yet; try again"
            return ""
        finally:
            replica.claimant = None

    @staticmethod
    async def _holder_is_live(replica: Replica) -> bool:
        """Probe the session holding *replica*: live if it answers the
        probe, or goes on sending or applying, within PROBE_TIMEOUT without
        ending. Frames it sent before the probe prove nothing: a link that
        was stalled delivers them and then its end."""
        conn, done = replica.conn, replica.session_done
        if conn is None or done is None or done.is_set():
            return False
        probe = replica.probe = Probe(token=secrets.randbits(64))
        asked = trio.current_time()
        try:
            with trio.move_on_after(PROBE_TIMEOUT):
                with contextlib.suppress(tp.LinkDown, tp.ProtocolError):  # the session is ending: settled soon
                    conn.enqueue(tp.Ping(token=probe.token))
                    await conn.flush()
                await probe.settled.wait()
        finally:
            replica.probe = None
        if done.is_set():
            return False
        return probe.answered or replica.heard > asked or replica.busy

    async def _session(self, conn: tp.Connection, replica: Replica, peer: str) -> None:
        try:
            await conn.send(tp.Welcome(last_seq=replica.last_applied, fresh=int(replica.last_applied == 0),
                                       generations=tracking.generations.pack(replica.generations),
                                       snapshots=tp.pack_snapshots([(s.name, s.seq) for s in replica.snapshots])))
            log.info("group %s: %s authenticated%s; replica at %s", replica.id, peer,
                     f" over {conn.tls_version}" if conn.tls_version else "", replica.position)
            while True:
                event = await conn.receive_event(idle_timeout=IDLE_TIMEOUT)
                replica.heard = since_ack = trio.current_time()
                acked = replica.last_applied
                while event is not None:
                    if isinstance(event, tp.Operation):
                        if not await self._apply(conn, replica, event):
                            return
                        if trio.current_time() - since_ack >= ACK_AT_LEAST_EVERY:
                            # A megabyte of small slow changes (creates on a busy disk) can take seconds.
                            if not self._undo_durable(replica):
                                return
                            conn.enqueue(tp.Ack(seq=replica.last_applied))
                            await conn.flush()
                            since_ack, acked = trio.current_time(), replica.last_applied
                    elif isinstance(event, tp.Ping):
                        conn.enqueue(tp.Pong(token=event.token))
                    elif isinstance(event, tp.Pong):
                        probe = replica.probe
                        if probe is not None and event.token == probe.token:
                            probe.answered = True
                            probe.settled.set()
                    elif isinstance(event, tp.Close):
                        if replica.last_applied != acked:
                            if not self._undo_durable(replica):
                                return
                            conn.enqueue(tp.Ack(seq=replica.last_applied))
                        try:  # the goodbye says what is durable: a primary letting the group go waits for it
                            await replica.checkpoint_in_thread()
                        except OSError as exc:
                            log.error("group %s: cannot save the replica position at the end of the session: %s",
                                      replica.id, exc)
                        if replica.last_saved:
                            conn.enqueue(tp.Durable(seq=replica.last_saved))
                        conn.enqueue(tp.Close(last_seq=replica.last_applied))
                        await conn.flush()
                        log.info("group %s: %s closed the session at %s", replica.id, peer, replica.position)
                        return
                    event = conn.next_buffered_event()
                if replica.last_applied != acked:
                    if not self._undo_durable(replica):
                        return
                    conn.enqueue(tp.Ack(seq=replica.last_applied))
                await conn.flush()
        except tp.LinkDown as exc:
            log.warning("group %s: session with %s ended: %s", replica.id, peer, exc)

    @staticmethod
    def _undo_durable(replica: Replica) -> bool:
        """Make the undo records of the batch just applied durable; False
        (the session must end, unacknowledged) when they cannot be."""
        if replica.undo is None:
            return True
        try:
            replica.undo.flush()
        except OSError as exc:
            log.error("group %s: cannot make the undo log durable at %s: %s; ending the session (the primary "
                      "resends what is not acknowledged)", replica.id, replica.position, exc)
            return False
        return True

    def _sessions(self) -> int:
        return sum(1 for replica in self.replicas.values() if replica.session is not None)

    async def _apply(self, conn: tp.Connection, replica: Replica, op: tp.Operation) -> bool:
        """Apply *op* through the table (``_apply``) and queue its answer;
        False when it failed and the session must end."""
        if self.arrivals is not None and self.arrivals.taken(replica):
            # The copy is the group's data now: nothing more of this session may reach it.
            log.error("group %s: %s sent %s after the group was taken over; ending the session", replica.id,
                      conn.peer, type(op).__name__)
            conn.enqueue(tp.Nack(seq=op.seq, errno=errno.EPERM, message="the group was taken over"))
            await conn.flush()
            return False
        if isinstance(op, tp.Adopt) and self.arrivals is not None:
            conn.enqueue(await self.arrivals.answer(self, replica, op, conn.peer))
            replica.last_applied = op.seq
            return True
        try:
            if isinstance(op, tp.Clone) or (op.BARRIER and self._sessions() > 1):
                # A copy without reflinks can take minutes, a flush seconds: in a thread, the link kept alive,
                # so the other groups' sessions go on meanwhile and this one's primary hears the daemon working.
                replica.busy = True
                try:
                    answer = await _applied_keeping_alive(conn, replica, op)
                finally:
                    replica.busy = False
            else:
                # Alone, a session waits for its barrier either way, and the hand-off to a thread and
                # back (about 0.25 ms here) would be most of a fast flush.
                answer = apply(replica, op)
        except OSError as exc:
            code = exc.errno or errno.EIO
            log.error("group %s: cannot apply seq %d (%s) at %s: %s; ending the session", replica.id, op.seq,
                      type(op).__name__, replica.position, exc)
            conn.enqueue(tp.Ack(seq=replica.last_applied))
            conn.enqueue(tp.Nack(seq=op.seq, errno=code, message=str(exc)[:500]))
            await conn.flush()
            return False
        if answer is not None:
            conn.enqueue(answer)
        replica.last_applied = op.seq
        replica.frames_applied += 1
        replica.bytes_applied += op.payload_size()
        return True

    async def checkpoints(self) -> None:
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            for replica in list(self.replicas.values()):
                if replica.session is not None and replica.root_replaced():
                    # Writes to files it holds open would go on into the removed tree, acknowledged.
                    log.warning("group %s: the replica directory %s was removed; ending the session so that "
                                "the primary reconnects to an empty replica", replica.id, replica.tree.root)
                    replica.session.cancel()
                    continue
                try:
                    await replica.checkpoint_in_thread()
                except OSError as exc:
                    log.error("group %s: cannot save the replica position: %s", replica.id, exc)
                    continue
                if replica.conn is not None and replica.last_saved:
                    # Tell the primary it may forget what it kept for a crash of ours (sent with the next reply).
                    with contextlib.suppress(tp.LinkDown, tp.ProtocolError):
                        replica.conn.enqueue(tp.Durable(seq=replica.last_saved))

    def close(self) -> None:
        for replica in self.replicas.values():
            try:
                replica.checkpoint()
            except OSError as exc:
                log.error("group %s: cannot save the replica position: %s", replica.id, exc)
            replica.tree.close()


async def _applied_keeping_alive(conn: tp.Connection, replica: Replica, op: tp.Operation) -> tp.Frame | None:
    """``apply`` in a worker thread, with a Pong sent every KEEPALIVE
    seconds meanwhile: the primary's reader hears the link alive (it waits
    for the ack as long as the clone's size allows)."""
    applied = trio.Event()
    failed: OSError | None = None
    answer = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_keep_alive, conn, applied)
        try:
            answer = await trio.to_thread.run_sync(apply, replica, op)
        except OSError as exc:  # raised past the nursery: as it is, not in an exception group
            failed = exc
        finally:
            applied.set()
    if failed is not None:
        raise failed
    return answer


async def _keep_alive(conn: tp.Connection, applied: trio.Event) -> None:
    """Told to stop, never cancelled: a send cut short could leave half a
    frame on a TLS stream."""
    while True:
        with trio.move_on_after(KEEPALIVE):
            await applied.wait()
            return
        conn.enqueue(tp.Pong(token=0))
        try:
            await conn.flush()
        except tp.LinkDown:
            return  # the session finds it out with its next send


def _check_not_a_primary(root: Path, group: str) -> None:
    """Raises ReplicaRefused when *root* holds a primary store's state."""
    if holds_primary_state(root):
        raise ReplicaRefused(f"the replica directory {root} of group {group} holds a primary store's state (a "
                             f"demote that did not finish: run 'fsrep demote {root} --into {root.parent}' again); "
                             f"it takes no changes")


def _fenced(group: str, promoted: dict[str, Any]) -> str:
    """Why a promoted replica refuses its old primary: it is the group's
    primary now, and two primaries must never replicate into one replica."""
    generation = str(promoted.get("generation", ""))[:8]
    return (f"group {group} was promoted to primary on the secondary's host at generation {generation}: it takes no "
            f"more changes from this primary, which is the old one — unmount it and run 'fsrep demote STORE --into "
            f"SECONDARY_STORE' to make it the promoted side's replica")


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "unknown peer"


async def run_secondary(store_path: str, host: str, port: int, key: bytes, *, tls: ssl.SSLContext | None = None,
                        verbose: bool = False, announce: bool = True, undo_limit: int = UNDO_LIMIT,
                        log_format: str = "text", metrics: tuple[str, int] | None = None) -> None:
    """Serve replicas until SIGTERM/SIGINT (SIGHUP reopens the log file);
    with *metrics*, their Prometheus metrics on that address too."""
    store = check_directory(store_path, "store")
    lock = StoreLock(store, "secondary")
    setup_logging(lock.meta / "serve.log", stderr=True, verbose=verbose, log_format=log_format)
    secondary = Secondary(store, key, tls, undo_limit)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        lock.release()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        exposed = await open_metrics(metrics) if metrics is not None else []
    except ConfigError:
        lock.release()
        raise
    bound = listeners[0].socket.getsockname()
    raise_open_file_limit()  # after the listen: a refused start says one thing only
    log.info("serving replicas in %s on %s:%d%s", store, bound[0], bound[1],
             " (mutual TLS, then the pre-shared key)" if tls is not None else "")
    if announce:
        print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(secondary.serve, listeners)
            nursery.start_soon(secondary.checkpoints)
            if exposed:
                nursery.start_soon(serve_metrics, exposed, of_secondary(secondary))
            # Not awaited: SIGTERM must find its receiver at once, however slowly the socket is bound.
            commands = functools.partial(dispatch, secondary, table=SECONDARY_COMMANDS)
            nursery.start_soon(serve_control, lock.meta, commands)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                notify.ready(f"serving replicas in {store} on {bound[0]}:{bound[1]}")
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        reopen_logs()
                        continue
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    notify.stopping("stopping: saving each replica's position")
                    break
            nursery.cancel_scope.cancel()
    finally:
        secondary.close()
        lock.release()
    log.info("secondary daemon exits")
