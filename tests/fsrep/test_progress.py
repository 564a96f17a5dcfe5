"""The arithmetic of a resync run: rate, ETA, percent and the rate limit,
with the clock passed in."""

from __future__ import annotations

import pytest

from fsrep._progress import RATE_FLOOR, ResyncRun, stronger

MiB = 1024 * 1024


def test_stronger_mode_does_at_least_both() -> None:
    assert stronger("quick", "checksum") == "checksum"
    assert stronger("full", "checksum") == "full"
    assert stronger("quick", "quick") == "quick"


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="quick, snapshot, checksum, full"):
        ResyncRun(1, "fast", "test")


def test_a_rate_limit_below_the_floor_is_raised_to_it() -> None:
    assert ResyncRun(1, "quick", "test", rate_limit=10).rate_limit == RATE_FLOOR
    assert ResyncRun(1, "quick", "test", rate_limit=5 * MiB).rate_limit == 5 * MiB
    assert ResyncRun(1, "quick", "test").rate_limit == 0


def test_rate_limit_paces_sends_to_the_limit() -> None:
    run = ResyncRun(1, "quick", "test", rate_limit=4 * MiB)
    run.start(100.0)
    now, waited = 100.0, 0.0
    for _ in range(40):  # 40 MiB at 4 MiB/s: about 10 s of pauses
        pause = run.pause_for(MiB, now)
        waited += pause
        now += pause
    assert 9.0 <= waited <= 10.0


def test_no_rate_limit_never_pauses() -> None:
    run = ResyncRun(1, "quick", "test")
    run.start(0.0)
    assert run.pause_for(10**9, 0.0) == 0.0


def test_snapshot_reports_rate_eta_and_percent() -> None:
    run = ResyncRun(1, "quick", "test")
    run.start(0.0)
    for second in range(1, 5):
        run.copied(10 * MiB, float(second))
    snap = run.snapshot(dirty_bytes=60 * MiB, now=4.0)
    assert snap.running
    assert not snap.finished
    assert snap.bytes_copied == 40 * MiB
    assert snap.bytes_remaining == 60 * MiB
    assert snap.bytes_per_second == 10 * MiB
    assert snap.eta_seconds == 6.0
    assert snap.percent == 40.0


def test_checksum_remaining_counts_what_is_left_to_compare() -> None:
    run = ResyncRun(1, "checksum", "test")
    run.start(0.0)
    run.check_total = 100 * MiB
    run.checked(30 * MiB, 4096, 1.0)
    snap = run.snapshot(dirty_bytes=4096, now=1.0)
    assert snap.bytes_remaining == 70 * MiB + 4096
    assert snap.bytes_mismatched == 4096


def test_a_finished_run_is_complete() -> None:
    run = ResyncRun(1, "checksum", "test")
    run.start(0.0)
    run.finish("InSync", 2.0, verified=True)
    snap = run.snapshot(dirty_bytes=0, now=3.0)
    assert snap.finished
    assert not snap.running
    assert snap.verified
    assert snap.percent == 100.0
    assert snap.bytes_remaining == 0
    assert snap.eta_seconds == 0.0
    assert snap.elapsed_seconds == 2.0


def test_the_directory_phase_counts_directories_and_has_no_eta_of_zero() -> None:
    run = ResyncRun(1, "checksum", "test")
    run.start(0.0)
    for second in range(1, 5):
        run.compared_directory(entries=10, now=float(second))
    snap = run.snapshot(dirty_bytes=0, now=4.0, dirty_dirs=12)
    assert snap.directories_checked == 4
    assert snap.entries_checked == 40
    assert snap.directories_remaining == 12
    assert snap.bytes_remaining == 0
    assert snap.eta_seconds == 12.0  # 12 directories left at one a second
    assert snap.percent == 25.0


def test_directories_left_with_bytes_of_no_known_rate_give_no_eta() -> None:
    run = ResyncRun(1, "quick", "test")
    run.start(0.0)
    assert run.snapshot(dirty_bytes=0, now=1.0, dirty_dirs=5).eta_seconds is None  # none compared yet
    run.compared_directory(entries=1, now=1.0)
    snap = run.snapshot(dirty_bytes=MiB, now=2.0, dirty_dirs=5)
    assert snap.eta_seconds is None  # nothing copied yet: how long the data takes is not known
    assert 0.0 < snap.percent < 100.0


def test_a_finished_run_has_no_directories_left() -> None:
    run = ResyncRun(1, "quick", "test")
    run.start(0.0)
    run.compared_directory(entries=3, now=1.0)
    run.finish("InSync", 2.0)
    snap = run.snapshot(dirty_bytes=0, now=3.0, dirty_dirs=2)
    assert snap.directories_remaining == 0
    assert snap.eta_seconds == 0.0
