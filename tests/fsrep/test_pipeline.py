"""The ordering core, driven without TCP or trio."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fsrep
import tracking
from fsrep._pipeline import Drain, InFlight, Pipeline, Position

MARKS = tracking.Marks(meta=((7, b"f"),))


def _queued(pipeline: Pipeline, count: int, *, nbytes: int = 10, marks: tracking.Marks = MARKS) -> list[InFlight]:
    entries = []
    for _ in range(count):
        entry = InFlight(pipeline.next_seq, nbytes, marks)
        pipeline.add(entry, now=1.0)
        entries.append(entry)
    return entries


@pytest.mark.parametrize("module", ["_pipeline", "_verdict"])
def test_the_ordering_core_and_the_verdict_import_no_io(module: str) -> None:
    tree = ast.parse((Path(fsrep.__file__).parent / f"{module}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module}
    assert not imported & {"trio", "socket", "os", "select", "selectors", "asyncio", "time"}


def test_sequence_numbers_continue_from_the_last_saved_one() -> None:
    pipeline = Pipeline(41)
    assert (pipeline.next_seq, pipeline.acked_seq, pipeline.durable_seq) == (42, 41, 41)
    entry, = _queued(pipeline, 1)
    assert entry.seq == 42
    assert pipeline.next_seq == 43
    assert len(pipeline) == 1


def test_a_used_sequence_number_is_refused() -> None:
    pipeline = Pipeline(5)
    _queued(pipeline, 1)
    with pytest.raises(ValueError, match="was used already"):
        pipeline.add(InFlight(6, 0), now=0.0)


def test_acks_are_cumulative_and_complete_entries_in_order() -> None:
    pipeline = Pipeline(0)
    entries = _queued(pipeline, 5, nbytes=100)
    assert pipeline.bytes_in_flight == 500
    done = pipeline.on_ack(3, now=2.0)
    assert [e.seq for e in done] == [1, 2, 3]
    assert all(e.ok for e in done)
    assert entries[3].ok is None
    assert pipeline.acked_seq == 3
    assert pipeline.bytes_in_flight == 200
    assert len(pipeline) == 2
    assert pipeline.on_ack(2, now=3.0) == []  # an old ack changes nothing
    assert pipeline.acked_seq == 3


def test_acknowledged_marks_are_kept_until_durable() -> None:
    pipeline = Pipeline(0)
    _queued(pipeline, 3)
    pipeline.on_ack(3, now=1.0)
    assert pipeline.unsettled_marks() == [MARKS] * 3
    pipeline.on_durable(2)
    assert pipeline.durable_seq == 2
    assert pipeline.unsettled_marks() == [MARKS]
    assert pipeline.lost_by_replica(2) == [MARKS]  # it came back at 2: seq 3 was lost
    pipeline.on_durable(3)
    assert pipeline.unsettled_marks() == []
    assert pipeline.lost_by_replica(0) == []


def test_entries_without_marks_leave_nothing_unsettled() -> None:
    pipeline = Pipeline(0)
    _queued(pipeline, 2, marks=tracking.Marks())
    pipeline.on_ack(2, now=1.0)
    assert pipeline.unsettled_marks() == []


def test_a_lost_link_fails_everything_in_flight() -> None:
    pipeline = Pipeline(0)
    entries = _queued(pipeline, 3)
    pipeline.on_ack(1, now=1.0)
    failed = pipeline.lost()
    assert failed == entries[1:]
    assert [e.ok for e in entries] == [True, False, False]
    assert len(pipeline) == 0
    assert pipeline.bytes_in_flight == 0
    assert pipeline.lag_bytes == 0
    pipeline.restart_at(1)
    assert (pipeline.next_seq, pipeline.acked_seq) == (2, 1)


def test_the_ack_watchdog_counts_from_the_last_progress() -> None:
    pipeline = Pipeline(0)
    assert not pipeline.overdue(100.0, timeout=10)  # nothing in flight
    pipeline.add(InFlight(1, 0), now=50.0)
    assert pipeline.waiting_since() == 50.0
    assert not pipeline.overdue(60.0, timeout=10)
    assert pipeline.overdue(60.5, timeout=10)
    pipeline.add(InFlight(2, 0), now=60.0)  # a second entry does not reset the clock
    assert pipeline.overdue(60.5, timeout=10)
    pipeline.on_ack(1, now=61.0)
    assert not pipeline.overdue(70.0, timeout=10)
    assert pipeline.overdue(71.5, timeout=10)


def test_a_clone_being_copied_gets_the_grace_its_size_asks_and_the_change_after_it_does_not() -> None:
    pipeline = Pipeline(0)
    pipeline.add(InFlight(1, 0, grace=30.0), now=0.0)  # a clone the secondary copies without reflinks
    pipeline.add(InFlight(2, 0), now=1.0)
    assert not pipeline.overdue(39.0, timeout=10)
    assert pipeline.overdue(40.5, timeout=10)
    pipeline.on_ack(1, now=35.0)
    assert not pipeline.overdue(44.0, timeout=10)
    assert pipeline.overdue(45.5, timeout=10), "the change after the clone inherited its grace"


def test_the_semi_sync_lag_counts_operations_too() -> None:
    pipeline = Pipeline(0)
    _queued(pipeline, 2, nbytes=1000)
    assert pipeline.lag_bytes == 2000 + 2 * 256


def test_a_drain_covers_what_was_sent_before_it_only() -> None:
    pipeline = Pipeline(0)
    _queued(pipeline, 2)
    drain = pipeline.drain()
    assert drain == Drain(2)
    later, = _queued(pipeline, 1)
    assert not pipeline.drained(drain)
    assert pipeline.blocker(drain) is not later
    assert pipeline.blocker(drain).seq == 2
    pipeline.on_ack(2, now=1.0)
    assert pipeline.drained(drain)
    assert pipeline.blocker(drain) is None
    assert not pipeline.drained(pipeline.drain())


def test_positions_name_the_generation_and_order_by_seq_within_one() -> None:
    position = Position("0123456789abcdef" * 2, 17)
    assert str(position) == "seq 17 of generation 01234567"
    assert Position("aa", 3) < Position("aa", 4)
    with pytest.raises(AttributeError):
        position.seq = 18  # type: ignore[misc]
