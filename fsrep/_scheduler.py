"""Resync runs of one group: the run asked for, the one queued behind it,
the few that ended, and the loops that start them and watch them.

A run is asked for (by the operator, a reconnection to a stale replica, a
bug, or policy async's timer), joins the one running or queued when that
does as much, and runs on the current session. A run whose session is lost
waits for the next; one that makes no progress for ``resync_stall``
seconds is reported and restarted on a fresh session.

The background loops only call the step methods (``request``, ``take``,
``ended``, ``stalled``, ``ship_due``), which tests call directly.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import trio

import transport as tp

from ._progress import ResyncRun, RunRefused, clamp_rate, stronger
from ._state import RelationshipState

if TYPE_CHECKING:
    from ._splitter import Relationship

log = logging.getLogger(__name__)
R = RelationshipState
Hook = Callable[[ResyncRun], Awaitable[None]]


class ResyncScheduler:
    """The runs of one relationship."""

    def __init__(self, rel: Relationship) -> None:
        self._rel = rel
        self.hook: Hook | None = None  # what runs a resync (set by the daemon)
        self.run: ResyncRun | None = None  # the latest run, running or finished
        self.queued: ResyncRun | None = None
        self.recent: collections.deque[ResyncRun] = collections.deque(maxlen=8)
        self.default_rate_limit = 0  # bytes/s for runs not given one
        self._ids = 0
        self._wakeup = trio.Event()
        self._run_ended = trio.Event()
        self._holds = 0  # while above 0, no run starts (``held``)

    # --- steps ---------------------------------------------------------------------

    def request(self, mode: str, *, reason: str, rate_limit: int = 0, routine: bool = False,
                snapshot: str = "", keep_divergent: bool = False, pull_into: str = "", restore: bytes = b"",
                restore_into: str = "") -> ResyncRun:
        """Start a resync, or join the one running or queued (raising its
        mode to *mode* if that does more). Returns the run that will do it.
        *snapshot*: mode snapshot from that snapshot, not the newest common one.
        *keep_divergent*: a SplitBrain group's secondary side is given up,
        its changes since *snapshot* copied out of the replica first.
        *pull_into*: its primary side is given up (kept here first), the
        secondary's taken through the group's directory in the mount.
        *restore*: the file at that path is first made, through *restore_into*
        (the group's directory in the mount), as the replica holds it — in
        a run not yet begun: never one that runs.

        Raises:
            ValueError: the group is SplitBrain and *mode* is not full, or
                another restore is queued.
        """
        rel = self._rel
        discarding = keep_divergent or bool(pull_into)
        if rel.state is R.SPLIT_BRAIN and mode != "full" and not discarding:
            raise ValueError(f"group {rel.record.id} is SplitBrain ({rel.record.stale_reason}); only "
                             f"'--mode full' resyncs it, discarding the replica's changes")
        now = trio.current_time()
        rate_limit = rate_limit or self.default_rate_limit
        running = self.run if self.run is not None and self.run.running else None
        if running is not None and rel.state is not R.RESYNCING:
            running = None  # its work is done (it is only being wound up) or not begun: queue another
        if running is not None and stronger(running.mode, mode) == running.mode and self.queued is None \
                and not restore:
            if rate_limit:
                running.rate_limit = clamp_rate(rate_limit)
            return running
        if self.queued is not None and discarding:
            self.finish(self.queued, "superseded: the operator gives up a side of the split brain")
            self.queued = None
        if self.queued is not None and restore:
            if self.queued.restore not in (b"", restore):
                raise ValueError(f"a restore of /{self.queued.restore.decode(errors='replace')} from the secondary "
                                 f"is queued already; run this again when it is done")
            self.queued.restore, self.queued.restore_into = restore, restore_into
        if self.queued is not None:
            self.queued.mode = stronger(self.queued.mode, mode)
            self.queued.rate_limit = clamp_rate(rate_limit or self.queued.rate_limit)
            self.queued.basis = snapshot or self.queued.basis
            return self.queued
        self._ids += 1
        run = ResyncRun(self._ids, mode, reason, rate_limit, queued_at=now, routine=routine, basis=snapshot,
                        keep_divergent=keep_divergent, pull_into=pull_into, restore=restore,
                        restore_into=restore_into)
        if mode == "quick" and rel.state is R.IN_SYNC and not rel.dirty and not restore:
            run.start(now)
            self.finish(run, "InSync")
            self.run = run
            return run
        (log.debug if routine else log.info)("group %s: %s resync requested (%s)%s", rel.record.id, mode, reason,
                                              f", limited to {run.rate_limit} bytes/s" if run.rate_limit else "")
        self.queued = run
        self._wakeup.set()
        return run

    def interrupted(self, run: ResyncRun | None) -> None:
        """A running *run* lost its link: it resumes when the link is back —
        or, when another run is queued already, that one does its work.
        Whoever waits for a run to end (``resync_now``) looks again: the
        run's task may have ended before the link was known lost."""
        self._run_ended.set()
        self._run_ended = trio.Event()
        if run is None or not run.running:
            return
        if self.queued is None:
            run.restarts += 1
            run.started_at = None
            self.queued = run
        else:
            self.queued.mode = stronger(self.queued.mode, run.mode)
            self.finish(run, f"superseded by run {self.queued.id}")

    def finish(self, run: ResyncRun, outcome: str, *, verified: bool = False) -> None:
        run.finish(outcome, trio.current_time(), verified=verified)
        self.recent.append(run)

    def take(self) -> ResyncRun | None:
        """The queued run, started now; None when none is queued or it was
        refused (a SplitBrain group runs only full resyncs)."""
        if self._holds:
            return None
        run, self.queued = self.queued, None
        if run is None:
            return None
        if self._rel.state is R.SPLIT_BRAIN and run.mode != "full" and not (run.keep_divergent or run.pull_into):
            self.finish(run, f"refused: the group is SplitBrain ({self._rel.record.stale_reason})")
            return None
        self.run = run
        run.start(trio.current_time())
        return run

    def ended(self, run: ResyncRun, error: BaseException | None = None) -> None:
        """*run*'s work returned (or raised *error*)."""
        rel = self._rel
        if isinstance(error, tp.LinkDown):
            log.warning("group %s: resync failed: %s", rel.record.id, error)
            if rel.state is R.RESYNCING or rel.link.conn is not None:
                rel.link_lost(f"resync abandoned: {error}")
            self.interrupted(run)  # when the link was gone before the run began
        elif isinstance(error, RunRefused):
            log.warning("group %s: resync refused: %s", rel.record.id, error)
            self.finish(run, f"refused: {error}")
        elif error is not None:
            # Never retry the same failing steps forever: the next resync compares everything.
            rel.ledger.mark_everything("an internal error interrupted the last resync")
            self.finish(run, f"failed: internal error {error!r}")
        elif run.running:
            self.finish(run, "InSync", verified=run.mode == "checksum")
        self._run_ended.set()
        self._run_ended = trio.Event()

    def stalled(self, run: ResyncRun, now: float) -> float | None:
        """How long *run* has made no progress, when that is longer than
        the stall timeout."""
        idle = now - run.last_progress
        return idle if idle > self._rel.timeouts.resync_stall else None

    def ship_due(self) -> None:
        """Policy async: ship what changed since the last shipment."""
        rel = self._rel
        if rel.record.stale and rel.state is R.OUT_OF_SYNC and self.queued is None:
            self.request("quick", reason="policy async: shipping what changed", routine=True)

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """No run starts while this is open (one asked for waits in the
        queue); entered once the run under way, if any, has ended — what a
        move's cutover needs: the tree and the trackers to itself."""
        self._holds += 1
        try:
            while self.run is not None and self.run.running:
                await self._run_ended.wait()
            yield
        finally:
            self._holds -= 1
            self._wakeup.set()

    # --- loops ---------------------------------------------------------------------

    def start_session_tasks(self, nursery: trio.Nursery) -> None:
        """What runs while connected: queued runs (a stale replica gets a
        quick one) and policy async's shipments."""
        rel = self._rel
        if self.hook is None:
            return
        if rel.record.stale and rel.state is not R.SPLIT_BRAIN:
            self.request("quick", reason=f"the replica is stale: {rel.record.stale_reason}")
        nursery.start_soon(self._run_queued, self.hook)
        if rel.record.policy == "async":
            nursery.start_soon(self._ship_periodically)

    async def _run_queued(self, hook: Hook) -> None:
        try:
            while True:
                run = self.take()
                if run is None:
                    if self.queued is None or self._holds:
                        self._wakeup = trio.Event()
                        await self._wakeup.wait()
                    continue
                try:
                    await self._watched(run, hook)
                except tp.LinkDown as exc:
                    self.ended(run, exc)
                    return
                except RunRefused as exc:
                    self.ended(run, exc)
                    continue
                except Exception as exc:
                    self.ended(run, exc)
                    raise
                self.ended(run)
        finally:
            self._run_ended.set()
            self._run_ended = trio.Event()

    async def _watched(self, run: ResyncRun, hook: Hook) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, run)
                await hook(run)
                nursery.cancel_scope.cancel()
        except* (tp.LinkDown, RunRefused) as group:
            raise tp.first_error(group) from None

    async def _watch(self, run: ResyncRun) -> None:
        step = min(1.0, self._rel.timeouts.resync_stall / 4)
        while True:
            await trio.sleep(step)
            idle = self.stalled(run, trio.current_time())
            if idle is not None:
                log.warning("group %s: the %s resync made no progress for %.0fs; restarting it on a new session",
                            self._rel.record.id, run.mode, idle)
                self._rel.link_lost(f"the resync made no progress for {idle:.0f}s")  # cancels this session
                return

    async def _ship_periodically(self) -> None:
        while True:
            await trio.sleep(self._rel.timeouts.async_interval)
            self.ship_due()

    async def resync_now(self, reason: str) -> None:
        """When connected to a stale replica: resync and wait until that
        ended — InSync, or failed with the link."""
        rel = self._rel
        while rel.link.conn is not None and rel.record.stale and rel.state is not R.SPLIT_BRAIN:
            run = self.request("quick", reason=reason)
            while not run.finished and rel.link.conn is not None:
                await self._run_ended.wait()
            if run.outcome != "InSync":
                return
