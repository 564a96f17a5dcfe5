"""The resync scheduler's steps, called directly (no link, no resync code)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio
import trio.testing

import tracking
from fsrep._config import GroupRecord, GroupStore
from fsrep._splitter import Relationship, Timeouts
from fsrep._state import RelationshipState

R = RelationshipState


def _relationship(tmp_path: Path, state: RelationshipState = R.OUT_OF_SYNC, policy: str = "sync") -> Relationship:
    record = GroupRecord(id=str(uuid.uuid4()), path="", policy=policy, secondary="127.0.0.1:9")
    rel = Relationship(record, GroupStore(str(tmp_path)), b"k" * 32, Timeouts(resync_stall=30))
    rel.state = state
    return rel


async def test_a_quick_resync_of_a_clean_in_sync_group_ends_at_once(tmp_path: Path) -> None:
    scheduler = _relationship(tmp_path, R.IN_SYNC).scheduler
    run = scheduler.request("quick", reason="test")
    assert run.finished
    assert run.outcome == "InSync"
    assert scheduler.queued is None
    assert list(scheduler.recent) == [run]


async def test_requests_join_the_queued_run_and_raise_its_mode(tmp_path: Path) -> None:
    scheduler = _relationship(tmp_path).scheduler
    first = scheduler.request("quick", reason="a")
    assert scheduler.queued is first
    assert not first.finished
    again = scheduler.request("checksum", reason="b", rate_limit=10 * 2**20)
    assert again is first
    assert first.mode == "checksum"
    assert first.rate_limit == 10 * 2**20
    assert scheduler.request("quick", reason="c") is first
    assert first.mode == "checksum"


async def test_a_restore_never_joins_a_running_run_and_one_restore_is_queued_at_a_time(tmp_path: Path) -> None:
    rel = _relationship(tmp_path, R.IN_SYNC)
    scheduler = rel.scheduler
    restoring = scheduler.request("quick", reason="restore", restore=b"a/f", restore_into="/mnt")
    assert not restoring.finished, "a restore of an InSync group ended at once"
    assert scheduler.take() is restoring
    rel.state = R.RESYNCING
    second = scheduler.request("quick", reason="another", restore=b"g", restore_into="/mnt")
    assert second is not restoring, "a restore joined a run that had begun"
    assert (second.restore, second.restore_into) == (b"g", "/mnt")
    assert scheduler.request("checksum", reason="joins") is second
    with pytest.raises(ValueError, match="a restore of /g from the secondary is queued already"):
        scheduler.request("quick", reason="a third", restore=b"h", restore_into="/mnt")
    assert scheduler.request("quick", reason="the same", restore=b"g", restore_into="/mnt") is second


async def test_take_starts_the_queued_run_once(tmp_path: Path) -> None:
    scheduler = _relationship(tmp_path).scheduler
    run = scheduler.request("quick", reason="a")
    assert scheduler.take() is run
    assert run.running
    assert scheduler.run is run
    assert scheduler.take() is None


async def test_a_split_brain_group_runs_only_full_resyncs(tmp_path: Path) -> None:
    rel = _relationship(tmp_path)
    queued = rel.scheduler.request("quick", reason="before the verdict")
    rel.state = R.SPLIT_BRAIN
    with pytest.raises(ValueError, match="only '--mode full'"):
        rel.scheduler.request("quick", reason="asked")
    assert rel.scheduler.take() is None
    assert queued.outcome.startswith("refused: the group is SplitBrain")
    full = rel.scheduler.request("full", reason="the operator discards the replica's side")
    assert rel.scheduler.take() is full
    assert full.running


async def test_an_interrupted_run_waits_for_the_next_session(tmp_path: Path) -> None:
    scheduler = _relationship(tmp_path).scheduler
    run = scheduler.request("quick", reason="a")
    scheduler.take()
    scheduler.interrupted(run)
    assert scheduler.queued is run
    assert run.restarts == 1
    assert not run.running
    assert scheduler.take() is run


async def test_an_interrupted_run_gives_way_to_a_queued_one(tmp_path: Path) -> None:
    rel = _relationship(tmp_path)
    run = rel.scheduler.request("checksum", reason="a")
    rel.scheduler.take()
    rel.state = R.RESYNCING
    queued = rel.scheduler.request("checksum", reason="b")  # joins the running one
    assert queued is run
    queued = rel.scheduler.request("full", reason="c")  # does more: queued behind it
    assert queued is not run
    rel.scheduler.interrupted(run)
    assert run.outcome == f"superseded by run {queued.id}"
    assert rel.scheduler.queued is queued


async def test_a_run_that_failed_with_a_bug_leaves_the_whole_tree_to_compare(tmp_path: Path) -> None:
    rel = _relationship(tmp_path)
    run = rel.scheduler.request("quick", reason="a")
    rel.scheduler.take()
    rel.scheduler.ended(run, RuntimeError("bug"))
    assert run.outcome == "failed: internal error RuntimeError('bug')"
    assert rel.dirty.everything


async def test_a_finished_checksum_run_is_verified(tmp_path: Path) -> None:
    rel = _relationship(tmp_path)
    run = rel.scheduler.request("checksum", reason="a")
    rel.scheduler.take()
    rel.scheduler.ended(run)
    assert run.outcome == "InSync"
    assert run.verified


async def test_a_run_is_stalled_after_the_stall_timeout_without_progress(tmp_path: Path,
                                                                          mock_clock: trio.testing.MockClock
                                                                          ) -> None:
    scheduler = _relationship(tmp_path).scheduler
    run = scheduler.request("quick", reason="a")
    scheduler.take()
    mock_clock.jump(29)
    assert scheduler.stalled(run, trio.current_time()) is None
    run.progressed(trio.current_time())
    mock_clock.jump(30.5)
    assert scheduler.stalled(run, trio.current_time()) == pytest.approx(30.5)


async def test_policy_async_ships_only_what_a_stale_group_holds(tmp_path: Path) -> None:
    rel = _relationship(tmp_path, policy="async")
    rel.scheduler.ship_due()
    assert rel.scheduler.queued is None  # not stale: nothing to ship
    rel.mark_dirty(tracking.Marks(meta=((5, b"f"),)), "a change kept local")
    rel.scheduler.ship_due()
    assert rel.scheduler.queued is not None
    assert rel.scheduler.queued.routine
