"""The activity log, without FUSE: which changes must be recorded before
they are applied, what stays in the hot set, and what a crash makes dirty."""

from __future__ import annotations

import pytest

from tracking import EXTENT_SIZE, LOCAL_SEQ, REGION_SIZE, ActivityLog, DirtySet, Marks, RegionRange, regions_for


def test_activity_log_persists_only_for_new_extents() -> None:
    log = ActivityLog(hot=4)
    write = Marks(regions=((9, b"f", 0, 4096),))
    assert log.touch(write, seq=1, acked=0) is True
    assert log.touch(write, seq=2, acked=1) is False
    assert log.touch(Marks(regions=((9, b"f", EXTENT_SIZE, 1),)), seq=3, acked=2) is True


def test_activity_log_keeps_extents_with_changes_in_flight() -> None:
    log = ActivityLog(hot=2)
    for seq in range(1, 6):
        log.touch(Marks(regions=((1, b"f", seq * EXTENT_SIZE, 1),)), seq=seq, acked=0)
    assert len(log) == 5, "nothing acknowledged: nothing may leave the log"
    log.touch(Marks(regions=((1, b"f", 99 * EXTENT_SIZE, 1),)), seq=6, acked=5)
    assert len(log) == 2


def test_recovery_marks_every_active_extent_dirty() -> None:
    log = ActivityLog()
    log.touch(Marks(regions=((4, b"f", EXTENT_SIZE + 10, 1),), dirs=((2, b"d"),)), seq=1, acked=0)
    dirty = DirtySet()
    assert ActivityLog.recover(log.payload(), dirty) == 2
    per_extent = EXTENT_SIZE // REGION_SIZE
    assert list(dirty.ranges(4)) == [RegionRange(per_extent, per_extent)]
    assert dirty.dir_dirty(2)


def test_small_files_in_one_directory_share_one_activity_record() -> None:
    log = ActivityLog()
    assert log.touch(Marks(regions=((100, b"d/a", 0, 10),), parent=7), seq=1, acked=0) is True
    for i, ino in enumerate(range(101, 150)):
        assert log.touch(Marks(regions=((ino, b"d/f%d" % ino, 0, 1000),), parent=7), seq=2 + i, acked=0) is False
        assert log.touch(Marks(meta=((ino, b"d/f%d" % ino),), parent=7), seq=2 + i, acked=0) is False
    dirty = DirtySet()
    ActivityLog.recover(log.payload(), dirty)
    assert dirty.dir_dirty(7)
    assert dirty.heads_dirty(7)
    assert dirty.hint(7) == b"d"
    dirty.clean_dir(7)
    assert not dirty.heads_dirty(7)


def test_a_change_over_many_extents_is_one_activity_record_and_recovers_whole() -> None:
    log = ActivityLog()
    huge = Marks(regions=((9, b"big", 0, 999999999999999),), meta=((9, b"big"),), parent=1)
    assert log.touch(huge, seq=1, acked=0)
    assert len(log.payload()["extents"]) == 2  # the directory's file heads, and one span for the rest
    dirty = DirtySet()
    ActivityLog.recover(log.payload(), dirty)
    assert dirty.count_in(9, regions_for(EXTENT_SIZE, 999999999999999 - EXTENT_SIZE)) == \
        regions_for(EXTENT_SIZE, 999999999999999 - EXTENT_SIZE).count
    assert dirty.heads_dirty(1)


def test_an_activity_log_written_before_spans_still_recovers() -> None:
    dirty = DirtySet()
    assert ActivityLog.recover({"extents": [[9, 2, b"f".hex()]]}, dirty) == 1
    assert list(dirty.ranges(9)) == [RegionRange(2 * EXTENT_SIZE // REGION_SIZE, EXTENT_SIZE // REGION_SIZE)]



def test_a_failed_save_makes_the_next_change_ask_again() -> None:
    log = ActivityLog()
    write = Marks(regions=((9, b"f", 0, 4096),))
    assert log.touch(write, seq=1, acked=0) is True
    log.save_failed()
    assert log.touch(write, seq=2, acked=1) is True  # the same extent: the log on disk may not hold it
    assert log.touch(write, seq=3, acked=2) is False


def test_a_change_kept_local_stays_active_until_the_dirty_set_is_saved() -> None:
    log = ActivityLog(hot=1)
    log.touch(Marks(regions=((1, b"f", 0, 1),)), seq=LOCAL_SEQ, acked=10)
    log.touch(Marks(regions=((1, b"f", EXTENT_SIZE, 1),)), seq=11, acked=10)
    assert len(log) == 2, "a local-only change left the log before the dirty set held it"
    log.settle()
    log.touch(Marks(regions=((1, b"f", 2 * EXTENT_SIZE, 1),)), seq=12, acked=12)
    assert [extent[1] for extent in log.payload()["extents"]] == [2]


@pytest.mark.parametrize("payload", [{}, {"extents": [[1]]}, {"extents": [["x", 0, ""]]}, {"extents": [[1, 0, "zz"]]}])
def test_a_malformed_activity_log_is_an_error_not_nothing_to_recover(payload: dict) -> None:
    with pytest.raises(ValueError, match="not an activity log"):
        ActivityLog.recover(payload, DirtySet())
