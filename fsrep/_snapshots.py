"""The pseudo snapshots of one group on the primary: taken without holding
a client's change, kept with what changed here since each, retired on a
schedule, and used as the starting point of a resync when the dirty set
cannot be trusted.

How this works: ``Snapshots`` is a tracker of the group's ``Recorder``, so
every change applied here is recorded in the newest snapshot's delta (and,
while one is being taken, in its intercept log) before it is applied — no
further call in the write path. Taking one (``create``) follows
``tracking.Taking``'s steps: open the intercept log, drain what was in
flight, send the Snapshot frame (the replica takes its side at that exact
point of the stream), drain it, then add this side's snapshot with the
intercept log closed into it. Clients write on throughout.

When the group leaves InSync (``left_sync``, from the ledger's stale mark),
an automatic point is added at the last acknowledged position: everything
up to it is on both sides, and its delta starts with what was in flight or
already dirty, so a common point always exists without a round trip.

Durability: the chain is saved with the dirty set (``save``, once a second
when it changed) and, in a worker thread, right after a snapshot is taken
or retired (``save_soon``); ``SnapshotFile`` appends what was recorded
since the last save to a journal and writes the chain whole only when it
was reshaped — a save costs what changed, not the size of a long-lived
snapshot's record. What
changed since that save is in the activity log,
which lets an extent go only once the chain holding its change is saved
(``saved_seq``). A crash of this daemon therefore loses nothing since a
snapshot: the activity log's extents are added to the newest delta when the
group is opened again.

Which snapshots are common: a taken one while the replica reports it (its
Welcome lists the snapshots its saved position reached), an automatic one
while the replica's history holds the generation it was taken in and the
replica was not found behind it.

Caveats:
- Changes since an automatic point on the secondary are only what was in
  flight when it was taken (recorded here); the secondary keeps no record
  of its own for it.
- A snapshots file that cannot be read is set aside with a warning: the
  group has no common point until the next snapshot, and a resync that
  needs one compares by digest instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import trio

import tracking
import transport as tp

from ._pipeline import Drain
from ._snapshot_file import Job, SnapshotFile
from ._state import RelationshipState
from ._status import SnapshotStatus

if TYPE_CHECKING:
    from ._config import GroupStore
    from ._faults import Faults
    from ._splitter import Relationship

log = logging.getLogger(__name__)
R = RelationshipState
SNAPSHOT_INTERVAL = 3600.0
SNAPSHOT_KEEP = 3
FIRST_SNAPSHOT_DELAY = 60.0  # a group with no snapshot taken gets its first this soon (once InSync)
SCHEDULED = "sched-"  # the prefix of the snapshots the schedule takes (and retires)
NEVER = 2**64


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


class Snapshots:
    """The snapshot chain of one group, and the steps that change it."""

    def __init__(self, rel: Relationship, groups: GroupStore, faults: Faults) -> None:
        self._rel = rel
        self._groups = groups
        self._faults = faults
        self.file = SnapshotFile(groups.dir / f"{rel.record.id}.snapshots", groups)
        self.chain = self.file.load(rel.record.id)
        self.taking: tracking.Taking | None = None
        self.interval = SNAPSHOT_INTERVAL
        self.keep = SNAPSHOT_KEEP
        self.replica: dict[str, int] = {}  # the secondary's snapshots (name -> seq), as last known
        self._replica_seq = -1  # where the replica was at the last handshake
        self._replica_history: set[str] = set()  # its generations then (hex)
        self._this_session: set[str] = set()  # automatic points taken since that handshake
        self._recorded_seq = 0

    # --- the tracker -----------------------------------------------------------------

    def record(self, marks: tracking.Marks, seq: int) -> None:
        """Record a change about to be applied (see ``Recorder``). Never fails."""
        delta = self.chain.current()
        if delta is not None:
            delta.apply(marks)
            self.file.unsaved.apply(marks)
        if self.taking is not None:
            self.taking.record(marks)
        if seq != tracking.LOCAL_SEQ and (delta is not None or self.taking is not None):
            self._recorded_seq = max(self._recorded_seq, seq)

    @property
    def saved_seq(self) -> int:
        """Every replicated change up to here is in the saved chain: the
        activity log may let go of its extents."""
        busy = self.chain.changed or self.taking is not None or self.file.writing
        return self.file.saved_seq if busy else NEVER

    def recover(self, payload: dict) -> None:
        """After a crash: every extent the activity log held active may
        have changed since the newest snapshot."""
        delta = self.chain.current()
        if delta is not None:
            tracking.ActivityLog.recover(payload, delta)
            self.file.reshaped = True  # saved whole next time

    def rekey(self, inodes: Mapping[int, int]) -> None:
        """The group's data was copied to another file system: every record
        under the inode numbers there (``DirtySet.rekeyed``); the chain is
        saved whole next time."""
        self.chain.rekey(inodes)
        self.file.unsaved = self.file.unsaved.rekeyed(inodes)
        self.file.reshaped = True
        if self.taking is not None:
            self.taking.intercept = self.taking.intercept.rekeyed(inodes)

    def save(self) -> bool:
        """Persist the chain if it changed (here and now); whether what is
        on disk is current."""
        job = self.file.start(self.chain, self._recorded_seq)
        if job is None:
            return not self.chain.changed and not self.file.writing
        return self._finished(job, self.file.write(job))

    async def save_soon(self) -> None:
        """Persist the chain in a worker thread: the event loop — every
        client's request — goes on meanwhile."""
        job = self.file.start(self.chain, self._recorded_seq)
        if job is not None:
            self._finished(job, await trio.to_thread.run_sync(self.file.write, job))

    def _finished(self, job: Job, error: OSError | None) -> bool:
        if not self.file.finish(self.chain, job, error):
            self._faults.say("snapshots", f"cannot save the snapshots ({error}); retrying every second, and the "
                                          f"activity log keeps what changed meanwhile")
            return False
        self._faults.clear("snapshots", "the snapshots are saved again")
        return True

    # --- automatic points ----------------------------------------------------------------

    def left_sync(self, generation: str, acked_seq: int) -> None:
        """The group leaves InSync at *acked_seq* of *generation*: add the
        automatic point there, knowing what is in flight or dirty already
        (the replica may hold some of it, or lack it). Never checkpoints."""
        rel = self._rel
        changes = rel.dirty.copy()
        for marks in rel.pipeline.unsettled_marks():
            changes.apply(marks)
        now = time.time()
        sid = tracking.SnapshotId(f"{tracking.AUTO_PREFIX}{_stamp(now)}-{acked_seq}", generation, acked_seq, now,
                                  auto=True)
        try:
            self.chain.add(sid, changes=changes)
            self.file.reshaped = True
        except tracking.SnapshotError as exc:  # a name taken within the same second: the one there serves
            log.debug("group %s: no automatic point: %s", rel.record.id, exc)
            return
        if rel.state is R.IN_SYNC:  # the replica acknowledged everything up to here in this session
            self._this_session.add(sid.name)
        log.info("group %s: automatic %s: the common point while out of sync (%d dirty bytes known)",
                 rel.record.id, sid, changes.dirty_bytes)

    # --- what the secondary holds --------------------------------------------------------

    def reported(self, welcome: tp.Welcome, history: Sequence[bytes]) -> None:
        """A handshake: the replica's snapshots and where it stands."""
        self.replica = dict(welcome.snapshot_list())
        self._replica_seq = welcome.last_seq
        self._replica_history = {g.hex() for g in history}
        self._this_session.clear()

    def retire_orphans(self, conn: tp.Connection) -> None:
        """In sync after a handshake: retire the replica's snapshots this
        side does not have (a snapshot never finished, or deleted while
        the stream was down)."""
        if self._rel.state is R.IN_SYNC:
            for name in [n for n in self.replica if self.chain.find(n) is None]:
                self._retire_there(conn, name)

    def _retire_there(self, conn: tp.Connection, name: str) -> None:
        self.replica.pop(name, None)
        self._rel.queue(conn, tp.RetireSnapshot(seq=self._rel.pipeline.next_seq, name=name))

    def common(self, sid: tracking.SnapshotId) -> bool:
        """Whether *sid* is a common point with the replica as last known."""
        if not sid.auto:
            return self.replica.get(sid.name) == sid.seq
        if sid.name in self._this_session:
            return True
        return sid.generation in self._replica_history and self._replica_seq >= sid.seq

    def basis(self, name: str | None = None) -> tracking.SnapshotId | None:
        """The newest common snapshot (or the one named), if any."""
        for sid in reversed(list(self.chain)):
            if (name is None or sid.name == name) and self.common(sid):
                return sid
        return None

    def may_differ(self, sid: tracking.SnapshotId) -> tracking.DirtySet:
        """What may differ on this side's account: changed here since *sid*,
        and its intercept log."""
        changes = self.chain.since(sid.name)
        intercept = self.chain.intercept(sid.name)
        if intercept is not None:
            changes.merge(intercept)
        return changes

    # --- taking and retiring -----------------------------------------------------------

    def _name(self, prefix: str) -> str:
        base = f"{prefix}{_stamp(time.time())}"
        name, n = base, 1
        while self.chain.find(name) is not None or name in self.replica:
            n += 1
            name = f"{base}-{n}"
        return name

    async def create(self, name: str | None = None, *, prefix: str = "snap-") -> tracking.SnapshotId:
        """Take a snapshot (named *name*, or by the time); clients write on.

        Raises:
            SnapshotError: the group is not InSync (a common point needs
                both sides), the link was lost meanwhile, one is being taken
                already, or the name is taken or bad.
        """
        rel = self._rel
        name = tracking.check_name(name) if name else self._name(prefix)
        if self.chain.find(name) is not None:
            raise tracking.SnapshotError(f"group {rel.record.id} has a snapshot named {name} already; choose "
                                         f"another name")
        conn = self._check_in_sync("take a snapshot")
        if name in self.replica:  # only the replica has it: left by a snapshot never finished
            self._retire_there(conn, name)
        if self.taking is not None:
            raise tracking.SnapshotError(f"a snapshot of group {rel.record.id} is being taken; try again when it "
                                         f"is done")
        if len(self.chain) >= tracking.MAX_SNAPSHOTS - 1:  # room is kept for the automatic point
            raise tracking.SnapshotError(f"group {rel.record.id} holds {len(self.chain)} snapshots, the most it "
                                         f"keeps; delete one first ('fsrep snapshot MOUNTPOINT delete NAME')")
        started = trio.current_time()
        taking = self.taking = tracking.Taking(name, time.time(), rel.pipeline.next_seq - 1)
        try:
            await self._drained(Drain(taking.first_drain))
            conn = self._check_in_sync("take a snapshot")
            op = tp.Snapshot(seq=rel.pipeline.next_seq, name=name, created=int(taking.created))
            taking.replica_at(op.seq)
            rel.queue(conn, op)
            rel.push()
            await self._drained(Drain(op.seq))
            self._check_in_sync("take a snapshot")
            sid = taking.commit(self.chain, rel.record.generations[-1])
            self.file.reshaped = True
        finally:
            self.taking = None
        self.replica[name] = sid.seq
        await self.save_soon()
        log.info("group %s: took %s in %.1f ms; its intercept log holds %d files and %d directories",
                 rel.record.id, sid, (trio.current_time() - started) * 1000, len(taking.intercept.files()),
                 taking.intercept.dir_count)
        return sid

    def _check_in_sync(self, what: str) -> tp.Connection:
        rel = self._rel
        conn = rel.link.conn
        if rel.state is not R.IN_SYNC or conn is None:
            raise tracking.SnapshotError(
                f"group {rel.record.id} is {rel.state.value}{'' if conn is not None else ', not connected'}: cannot "
                f"{what} — a common point needs both sides in sync; resync first ('fsrep-resync MOUNTPOINT')")
        return conn

    async def _drained(self, drain: Drain) -> None:
        if not await self._rel.drained(drain):
            raise tracking.SnapshotError(f"the link to the secondary was lost while the snapshot was taken "
                                         f"({self._rel.link.last_error}); nothing was taken")

    async def delete(self, name: str) -> tracking.SnapshotId:
        """Retire snapshot *name* on both sides (on the secondary now if the
        stream is running, else at a later handshake).

        Raises:
            SnapshotError: there is no such snapshot.
        """
        rel = self._rel
        try:
            sid = self.chain.retire(name)
            self.file.reshaped = True
        except tracking.SnapshotError:
            raise tracking.SnapshotError(f"group {rel.record.id} has no snapshot named {name}") from None
        conn = rel.link.conn
        if name in self.replica and conn is not None and rel.state in (R.IN_SYNC, R.RESYNCING):
            self._retire_there(conn, name)
        log.info("group %s: retired %s", rel.record.id, sid)
        await self.save_soon()
        return sid

    async def run_schedule(self) -> None:
        """Take a snapshot every ``interval`` seconds while InSync and keep
        the newest ``keep`` of those the schedule took."""
        if self.interval <= 0:
            return
        while True:
            await trio.sleep(self.next_turn())
            await self.scheduled()

    def next_turn(self) -> float:
        """Seconds to the schedule's next turn: the interval — or soon, while
        the chain holds no snapshot that was taken (an automatic point is
        this side's alone), so that a failover or a lost dirty set soon
        has a common point to resync from, not a whole tree to compare."""
        if any(not sid.auto for sid in self.chain):
            return self.interval
        return min(self.interval, FIRST_SNAPSHOT_DELAY)

    async def scheduled(self) -> None:
        """One turn of the schedule."""
        rel = self._rel
        if rel.state is not R.IN_SYNC:
            log.info("group %s: scheduled snapshot skipped: the group is %s", rel.record.id, rel.state.value)
            return
        try:
            await self.create(prefix=SCHEDULED)
        except tracking.SnapshotError as exc:
            log.info("group %s: scheduled snapshot not taken: %s", rel.record.id, exc)
            return
        taken = [sid for sid in self.chain if sid.name.startswith(SCHEDULED)]
        for sid in taken[:max(0, len(taken) - self.keep)]:
            await self.delete(sid.name)

    # --- status -------------------------------------------------------------------------

    def status(self, sid: tracking.SnapshotId) -> SnapshotStatus:
        return SnapshotStatus(name=sid.name, created=sid.created, generation=sid.generation, seq=sid.seq,
                              auto=sid.auto, common=self.common(sid),
                              changed_bytes=sum(d.dirty_bytes for d in self.chain.deltas(sid.name)))

    def newest_common(self) -> SnapshotStatus | None:
        sid = self.basis()
        return None if sid is None else self.status(sid)

    def listing(self) -> tuple[SnapshotStatus, ...]:
        return tuple(self.status(sid) for sid in self.chain)
