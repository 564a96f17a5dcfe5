"""``fsrep-move MOUNTPOINT --group ID --to-primary HOST:PORT``: a group
moves to another running primary, which serves it from then on and
relates to the same secondary from a pseudo snapshot all three hold;
this mount keeps a read-only copy.

How this works:
1. A second relationship of the group, the mover, replicates to the other
   primary's ``--accept-moves`` listener (``_arrivals``), and a watch on
   the group's recorder notes every change from then on. The mover asks
   first whether the group may come (Adopt, ask); then its first resync
   copies the whole tree (the replica there is empty). Clients keep
   working, replicated to the group's secondary as ever.
2. Catch-up passes: what the watch noted goes into the mover's dirty set,
   and a quick resync sends it; until what is left is small (as
   ``_move_across``: CUTOVER_BYTES and CUTOVER_DIRS) or PASSES were made.
3. The cutover: no resync of the group may run, clients' changes wait at
   the gate, what was sent to the secondary is acknowledged, the last
   catch-up runs. Then a pseudo snapshot is taken: the secondary holds it,
   this side holds it, and the copy equals this side. The record says
   "moved to" (unconfirmed) and is saved; then Adopt, take: the other
   primary takes the group over. On its answer this side ends its session
   with the secondary (the other primary's starts then, on the same
   replica), the record is confirmed, and the changes that waited fail
   with EROFS: the subtree is read-only here from now on. Nothing but the
   snapshot frame crosses to the secondary for the move.

Abort (``--abort``, Ctrl-C, the daemon stopping, a lost link, a refusal)
before the take: the mover goes, the other primary removes its copy when
the mover's session ends, and the group is as it was, in sync.

Caveats:
- A take whose answer never came (the link failed after it was sent):
  the group stays read-only here, its session with the secondary ended
  (the other primary may hold the group), and status says unconfirmed.
- The mover uses the pre-shared key, not TLS.
- Only a group in sync with its secondary moves, and one holding no other
  group.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

import tracking
import transport as tp

from ._config import ConfigError, GroupRecord, GroupStore, parse_address
from ._link import Timeouts
from ._move import Done, MoveRefused
from ._move_across import CUTOVER_BYTES, CUTOVER_DIRS, PASSES, Watch
from ._progress import MoveRun
from ._resync import resync
from ._splitter import Relationship
from ._state import RelationshipState
from ._tree import Tree

if TYPE_CHECKING:
    from ._groups import Group, Groups
    from ._ops import Operations

log = logging.getLogger(__name__)
R = RelationshipState
ADOPT_TIMEOUT = 60.0  # seconds the other primary may take to answer an Adopt
FOLLOW = 0.25  # seconds between looks at the operator's abort and the bytes sent


def clear(groups: GroupStore) -> None:
    """At mount: what the movers of moves a crash cut short kept (a move
    is not resumed)."""
    shutil.rmtree(_movers(groups), ignore_errors=True)


def _movers(groups: GroupStore) -> Path:
    return groups.dir.parent / "moving"


def check(group: Group, address: str, mount: Groups) -> None:
    """Whether *group* may move to the primary at *address*.

    Raises:
        MoveRefused: it may not (one line naming why and what to do).
    """
    rel, record = group.rel, group.rel.record
    if not record.path:
        raise MoveRefused("the default group's data is the store itself: declare the subtree to move as a group "
                          "(--group PATH), and move that")
    if record.moved_to:
        raise MoveRefused(f"the group moved to the primary at {record.moved_to} already")
    prefix = group.prefix
    inner = [g for g in mount.all if g is not group and g.prefix.startswith(prefix + b"/")]
    if inner:
        raise MoveRefused(f"the group holds group /{inner[0].prefix.decode(errors='replace')}: move that one "
                          f"first")
    if rel.state is not R.IN_SYNC or rel.conn is None:
        raise MoveRefused(f"the group is {rel.state.value}{'' if rel.conn is not None else ', not connected'}: "
                          f"a move to another primary starts from a point its secondary {record.secondary} holds "
                          f"too — resync first ('fsrep-resync MOUNTPOINT')")
    try:
        parse_address(address, what="--to-primary")
    except ConfigError as exc:
        raise MoveRefused(str(exc)) from None


def _state(record: GroupRecord, sid: tracking.SnapshotId | None, last_seq: int) -> bytes:
    """What the other primary is told of the group (``_arrivals.parse_state``)."""
    snapshot = {"name": "none", "generation": record.generations[-1], "seq": 0, "created": 0.0} if sid is None \
        else {"name": sid.name, "generation": sid.generation, "seq": sid.seq, "created": sid.created}
    return json.dumps({"path": record.path, "policy": record.policy, "secondary": record.secondary,
                       "last_seq": last_seq, "generations": record.generations, "snapshot": snapshot}).encode()


async def _adopt(mover: Relationship, take: int, state: bytes) -> tp.Adopted:
    """Ask the other primary (Adopt) and wait for its answer.

    Raises:
        LinkDown: the link failed, or no answer came in time.
    """
    mover.stream.prepare()  # the stream goes on at the replica's position
    with trio.move_on_after(ADOPT_TIMEOUT):
        reply = await mover.stream.ask(lambda seq: tp.Adopt(seq=seq, take=take, state=state), early=True)()
        assert isinstance(reply, tp.Adopted)
        return reply
    raise tp.LinkDown(f"no answer from {mover.record.secondary} within {ADOPT_TIMEOUT:g}s")


async def _ask(mover: Relationship, record: GroupRecord) -> None:
    """Adopt, ask: could the group come there? (Its copy there so far is
    made durable before the answer.)

    Raises:
        MoveRefused: it could not.
        LinkDown: the link failed, or no answer came in time.
    """
    reply = await _adopt(mover, tp.ADOPT_ASK, _state(record, None, 0))
    if not reply.ok:
        raise MoveRefused(f"the primary at {mover.record.secondary} cannot take the group: {reply.message}")


async def _caught_up(mover: Relationship, watch: Watch, why: str) -> None:
    """Send the mover what the watch noted (and what is dirty there
    already) with a quick resync, and wait until it is InSync.

    Raises:
        MoveRefused: it could not (the link to the other primary failed).
    """
    taken = watch.take()
    if taken:
        mover.ledger.dirty.merge(taken)
        mover.ledger.dirty_changed = True
        mover.leave_sync(why)
    await mover.resync_now(why)
    if mover.state is not R.IN_SYNC:
        raise MoveRefused(f"the link to the primary at {mover.record.secondary} failed while copying "
                          f"({mover.link.last_error or mover.state.value}); the group stays here")


async def _let_go(rel: Relationship) -> None:
    """End the session with the secondary: its goodbye comes once it has
    made every change acknowledged here durable, and says so; an fsync
    here after the move waits for that, then means durable there too."""
    acked = rel.pipeline.acked_seq
    async with rel.scheduler.held():  # no resync may send while the goodbye is awaited
        await rel.drain_and_close(timeout=5, goodbye=True)
    if rel.pipeline.durable_seq < acked:
        log.warning("group %s: the secondary did not report seq %d durable before this side let it go (%s); it "
                    "makes its replica durable when the session ends", rel.record.id, acked,
                    rel.link.last_error or "no goodbye in time")
    rel.let_go.set()


def _small(dirty: tracking.DirtySet) -> bool:
    return dirty.dirty_bytes <= CUTOVER_BYTES and dirty.dir_count <= CUTOVER_DIRS


async def move_to_primary(group: Group, address: str, key: bytes, timeouts: Timeouts, mount: Groups,
                          groups: GroupStore, ops: Operations) -> Done:
    """Move *group* to the primary at *address* while clients keep working.

    Raises:
        MoveRefused: the move was refused, aborted or failed before the
            take (the group is as it was), or the take's answer never came
            (the group is read-only here: the message says so).
        trio.Cancelled: the daemon stops (before the take: as an abort).
    """
    rel, record = group.rel, group.rel.record
    check(group, address, mount)
    run = rel.move = MoveRun(group.tree.root, address, trio.current_time())
    moving = _movers(groups) / record.id  # the mover's own state; gone with it
    mover_tree: Tree | None = None
    mover: Relationship | None = None
    watch = Watch()
    rel.recorder.trackers.append(watch)
    log.info("group %s (/%s): moving to the primary at %s: copying while clients work on", record.id, record.path,
             address)
    try:
        with trio.CancelScope() as scope:
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, moving, ignore_errors=True))
            mover_tree = await trio.to_thread.run_sync(Tree, group.tree.root)
            run.total_bytes = await trio.to_thread.run_sync(mover_tree.data_bytes)
            mover = Relationship(GroupRecord(id=record.id, path=record.path, policy="sync", secondary=address,
                                             stale=True, stale_reason="a move's copy"),
                                 GroupStore(str(moving)), key, timeouts)
            mover.ledger.mark_everything("a copy of the group for its new primary")  # the first resync sends it all
            mover.snapshots.interval = 0
            mover.scheduler.hook = functools.partial(resync, mover.stream, mover_tree, group.locator(ops.inodes))
            try:
                await mover.connect()
            except tp.AuthenticationError as exc:
                raise MoveRefused(f"the primary at {address} refused the key ({exc}); use the key file it was "
                                  f"mounted with") from None
            except tp.LinkDown as exc:
                raise MoveRefused(f"cannot reach the primary at {address} ({exc}); is it mounted with "
                                  f"--accept-moves {address}?") from None
            try:
                done = await _copied_and_taken(rel, mover, watch, run, groups, scope)
            except* MoveRefused as refused:
                raise tp.first_error(refused) from None
            except* tp.LinkDown as failed:
                raise MoveRefused(f"the link to the primary at {address} failed ({tp.first_error(failed)}); the "
                                  f"group stays here") from None
        if scope.cancelled_caught:
            raise MoveRefused("the move was aborted; the copy there is removed and the group stays here, in sync")
    except BaseException as exc:
        if not record.moved_to:
            why = ("aborted" if isinstance(exc, trio.Cancelled | KeyboardInterrupt) or "aborted" in str(exc)
                   else f"failed: {exc}")
            run.finish(why, trio.current_time())
            log.warning("group %s (/%s): the move to the primary at %s %s; the group stays here", record.id,
                        record.path, address, why)
        raise
    finally:
        rel.recorder.trackers.remove(watch)
        with trio.CancelScope(shield=True):
            if mover is not None and not mover.link.closing:
                await mover.drain_and_close(timeout=2)  # the other primary removes its copy
            if mover_tree is not None:
                mover_tree.close()
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, moving, ignore_errors=True))
    return done


async def _copied_and_taken(rel: Relationship, mover: Relationship, watch: Watch, run: MoveRun,
                            groups: GroupStore, scope: trio.CancelScope) -> Done:
    """Steps 1 to 3 of the module docstring, once the mover is connected."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_follow, run, mover, rel.record, scope)
        try:
            async with mover.scheduler.held():  # no copy before the answer
                await nursery.start(mover.serve)
                await _ask(mover, rel.record)
            await _caught_up(mover, watch, "copying the group to its new primary")
            for _ in range(PASSES):
                if _small(watch.dirty):
                    break
                run.phase, run.passes = "catching up", run.passes + 1
                await _caught_up(mover, watch, "a catch-up pass of the move")
            run.phase = "cutting over"
            await _ask(mover, rel.record)  # again: the copy there made durable while clients work on
            done = await _cut_over(rel, mover, watch, run, groups)
        except BaseException:
            if not rel.record.moved_to:
                with trio.CancelScope(shield=True):  # a goodbye: the other primary removes its copy
                    await mover.drain_and_close(timeout=2)
            raise
        nursery.cancel_scope.cancel()
    return done


async def _follow(run: MoveRun, mover: Relationship, record: GroupRecord, scope: trio.CancelScope) -> None:
    """Keep the progress current, and end the move when the operator
    aborts it — before the take only."""
    while not run.abort.is_set() or record.moved_to:
        run.copied_bytes = mover.bytes_sent
        await trio.sleep(FOLLOW)
    scope.cancel()


async def _cut_over(rel: Relationship, mover: Relationship, watch: Watch, run: MoveRun, groups: GroupStore) -> Done:
    """Hand the group over (see the module docstring, step 3).

    Raises:
        MoveRefused: before the take, or when its answer never came.
    """
    record = rel.record
    address = mover.record.secondary
    async with rel.scheduler.held():
        if not _small(watch.dirty):  # what piled up while a resync ran
            await _caught_up(mover, watch, "a catch-up pass of the move")
        with rel.stream.holding_mutations():
            await rel.drained(rel.pipeline.drain())
            await trio.lowlevel.checkpoint()  # the requests those acks woke go on to their replies
            paused = trio.current_time()
            await _caught_up(mover, watch, "the move's last catch-up")
            try:
                sid = await rel.snapshots.create(prefix="move-")
            except tracking.SnapshotError as exc:
                raise MoveRefused(f"no common snapshot with the secondary could be taken ({exc})") from None
            if not await rel.drained(rel.pipeline.drain()) or rel.state is not R.IN_SYNC:
                raise MoveRefused(f"the group left sync with its secondary at the cutover "
                                  f"({rel.link.last_error}); resync and move again")
            with trio.CancelScope(shield=True):  # from here on neither an abort nor the daemon stopping cuts in
                await _take(rel, mover, _state(record, sid, rel.pipeline.acked_seq), run, groups)
            run.pause_seconds = trio.current_time() - paused
    with trio.CancelScope(shield=True):
        await _let_go(rel)
        await mover.drain_and_close(timeout=5)  # the other primary's relationship with the secondary starts then
    run.copied_bytes = mover.bytes_sent
    run.finish("done", trio.current_time())
    log.info("group %s (/%s): moved to the primary at %s after a pause of %.3fs for clients' changes (%d catch-up "
             "passes; common snapshot %s); read-only here from now on", record.id, record.path, address,
             run.pause_seconds, run.passes, sid.name)
    return Done(run.source, address, trio.current_time() - run.started_at)


async def _take(rel: Relationship, mover: Relationship, state: bytes, run: MoveRun, groups: GroupStore) -> None:
    """Adopt, take: the record says "moved to" first; on the answer this
    side lets the secondary's replica go.

    Raises:
        MoveRefused: the other primary refused (the record is as it was),
            or its answer never came (the group stays read-only here).
    """
    record, address = rel.record, mover.record.secondary
    record.moved_to, record.move_unconfirmed = address, True
    try:
        groups.save(record)
    except OSError as exc:
        record.moved_to, record.move_unconfirmed = "", False
        raise MoveRefused(f"cannot save the move in {groups.dir} ({exc.strerror or exc})") from None
    try:
        reply = await _adopt(mover, tp.ADOPT_TAKE, state)
    except tp.LinkDown as exc:
        mover.link.close()
        await _let_go(rel)  # the other primary may hold the group: let it reach the replica
        run.finish("unconfirmed", trio.current_time())
        log.error("group %s (/%s): the link to the primary at %s failed before it said whether it took the group "
                  "(%s); the group is read-only here", record.id, record.path, address, exc)
        raise MoveRefused(f"the link to the primary at {address} failed before it said whether it took the group "
                          f"({exc}); the group is read-only here — see 'fsrep status' there") from None
    if not reply.ok:
        record.moved_to, record.move_unconfirmed = "", False
        with contextlib.suppress(OSError):
            groups.save(record)
        raise MoveRefused(f"the primary at {address} did not take the group: {reply.message}")
    record.move_unconfirmed = False
    try:
        groups.save(record)
    except OSError as exc:
        log.warning("group %s: cannot save that the primary at %s took it (%s); status says unconfirmed",
                    record.id, address, exc.strerror or exc)


def reclaim(rel: Relationship, groups: GroupStore, start: Callable[[Callable[[], Awaitable[None]]], None]) -> str:
    """Take back a group whose move never got its answer (``fsrep-move
    --abort``): writable here again, and replicating — the operator says
    the other primary does not serve it. Should it have taken the group and
    reached the secondary, the new generation it told there makes this
    side's handshake a refusal (SplitBrain), never a resync the wrong way.
    Returns where the move went.

    Raises:
        OSError: the record could not be saved (nothing changed).
    """
    record = rel.record
    address = record.moved_to
    record.moved_to, record.move_unconfirmed = "", False
    try:
        groups.save(record)
    except OSError:
        record.moved_to, record.move_unconfirmed = address, True
        raise
    rel.link = rel.link.reopened()
    rel.let_go = trio.Event()
    start(rel.serve)
    log.warning("group %s (/%s): taken back from an unconfirmed move to the primary at %s: writable here again, "
                "reconnecting to %s", record.id, record.path, address, record.secondary)
    return address
