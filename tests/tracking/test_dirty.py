"""Dirty sets, without FUSE."""

from __future__ import annotations

import pytest

from tracking import (
    REGION_SIZE,
    ClonedFrom,
    DirtySet,
    Marks,
    RegionOverflow,
    RegionRange,
    load_state,
    regions_for,
    save_state,
)


def test_write_after_link_cut_marks_its_regions_dirty() -> None:
    dirty = DirtySet()
    dirty.apply(Marks(regions=((7, b"a/f", 4096 * 10 + 5, 8192),)))
    assert list(dirty.ranges(7)) == [RegionRange(10, 3)]
    assert dirty.dirty_bytes == 3 * REGION_SIZE
    assert dirty.overlaps(7, RegionRange(12, 1))
    assert not dirty.overlaps(7, RegionRange(13, 5))
    assert dirty.hint(7) == b"a/f"


def test_cleaning_copied_regions_leaves_the_rest() -> None:
    dirty = DirtySet()
    dirty.mark_regions(1, b"f", RegionRange(0, 10))
    dirty.clean_regions(1, RegionRange(2, 3))
    assert list(dirty.ranges(1)) == [RegionRange(0, 2), RegionRange(5, 5)]
    dirty.clean_regions(1, RegionRange(0, 10))
    assert not dirty
    assert dirty.hint(1) is None


def test_meta_and_directories_are_tracked_apart_from_data() -> None:
    dirty = DirtySet()
    dirty.apply(Marks(meta=((3, b"f"),), dirs=((2, b"d"),)))
    assert dirty.meta_dirty(3)
    assert dirty.dir_dirty(2)
    assert dirty.dirty_bytes == 0
    dirty.clean_meta(3)
    dirty.clean_dir(2)
    assert not dirty


def test_everything_dirty_is_never_an_empty_set() -> None:
    dirty = DirtySet()
    dirty.mark_everything("new relationship")
    assert dirty
    assert dirty.reason == "new relationship"


def test_files_beyond_32_bit_regions_are_tracked_and_only_64_bit_offsets_overflow() -> None:
    dirty = DirtySet()
    dirty.apply(Marks(regions=((1, b"huge", 17 * 2**40, 100),)))  # a write at 17 TiB
    assert list(dirty.ranges(1)) == [RegionRange(17 * 2**40 // REGION_SIZE, 1)]
    assert dirty.blocks(Marks(regions=((1, b"huge", 17 * 2**40 + 50, 1),)))
    with pytest.raises(RegionOverflow):
        dirty.apply(Marks(regions=((1, b"huge", 2**64, 1),)))


def test_a_petabyte_truncate_is_a_few_ranges_not_gigabytes() -> None:
    dirty = DirtySet()
    dirty.apply(Marks(regions=((1, b"f", 0, 999999999999999),), meta=((1, b"f"),)))
    assert dirty.dirty_bytes >= 999999999999999
    assert list(dirty.ranges(1)) == [regions_for(0, 999999999999999)]
    dirty.clean_regions(1, RegionRange(10, 2**20))
    assert [(r.first, r.count) for r in dirty.ranges(1)][0] == (0, 10)
    assert dirty.blocks(Marks(regions=((1, b"f", 900000000000000, 1),)))
    assert not dirty.blocks(Marks(regions=((1, b"f", 20 * REGION_SIZE, 1),)))
    loaded = DirtySet.from_payload(dirty.to_payload())
    assert list(loaded.ranges(1)) == list(dirty.ranges(1))


def test_dirty_set_survives_a_save_and_load(tmp_path) -> None:
    dirty = DirtySet()
    dirty.apply(Marks(regions=((5, b"x/\xff", 0, 10 * REGION_SIZE), (5, b"x/\xff", 100 * REGION_SIZE, 1)),
                      meta=((6, b"m"),), dirs=((1, b""),)))
    save_state(tmp_path / "d.json", "fsrep-dirty", dirty.to_payload())
    loaded = DirtySet.from_payload(load_state(tmp_path / "d.json", "fsrep-dirty"))
    assert list(loaded.ranges(5)) == [RegionRange(0, 10), RegionRange(100, 1)]
    assert loaded.meta_dirty(6)
    assert loaded.dir_dirty(1)
    assert loaded.hint(5) == b"x/\xff"


def test_a_malformed_payload_is_an_error_not_a_clean_set() -> None:
    with pytest.raises(ValueError, match="not a dirty set"):
        DirtySet.from_payload({"everything": False})


def test_dropping_regions_keeps_dirty_metadata() -> None:
    dirty = DirtySet()
    dirty.apply(Marks(regions=((1, b"f", 0, 10),), meta=((1, b"f"),)))
    dirty.drop_regions(1)
    assert dirty.dirty_bytes == 0
    assert dirty.meta_dirty(1)
    dirty.clean_meta(1)
    assert not dirty


def test_marks_of_a_dirty_directory_are_counted_until_it_is_clean() -> None:
    dirty = DirtySet()
    dirty.mark_dir(7, b"d")
    before = dirty.dir_marks(7)
    dirty.mark_dir(7, b"d")  # a client's change while it is being compared
    assert dirty.dir_marks(7) == before + 1
    assert dirty.dirs_added == 1  # marked twice, dirty once
    dirty.clean_dir(7)
    assert dirty.dir_marks(7) == 0
    dirty.mark_dir(7, b"d")
    assert dirty.dirs_added == 2


def test_a_clone_record_is_saved_with_its_file_taken_once_and_goes_when_the_file_is_clean() -> None:
    dirty = DirtySet()
    dirty.apply(Marks(regions=((5, b"vm7.img", 0, 3 * REGION_SIZE),), meta=((5, b"vm7.img"),)))
    dirty.mark_clone(5, b"vm7.img", b"base/\xff.img")
    dirty.apply(Marks(regions=((6, b"vm8.img", 0, 1),)))
    dirty.mark_clone(6, b"vm8.img", b"base.img", backup="7.1700000000")
    loaded = DirtySet.from_payload(dirty.to_payload())
    assert loaded.take_clone(5) == ClonedFrom(b"base/\xff.img")
    assert loaded.take_clone(5) is None, "a clone is replayed once"
    loaded.clean_regions(6, RegionRange(0, 1))
    assert loaded.files() == [5], "a clone record alone is not a difference"
    assert loaded.take_clone(6) is None, "a file copied (clean) is no longer replayed as a clone"
    dirty.forget_file(5)
    assert dirty.take_clone(5) is None
    assert dirty.clone_backups() == {"7.1700000000": b"base.img"}
    merged = DirtySet()
    merged.merge(dirty)
    assert merged.take_clone(6) == ClonedFrom(b"base.img", "7.1700000000")
    assert merged.clone_backups() == {}


def test_a_rekeyed_set_is_the_same_under_the_new_numbers_and_drops_what_was_not_copied() -> None:
    dirty = DirtySet()
    dirty.mark_regions(10, b"d/f", RegionRange(3, 2))
    dirty.mark_meta(11, b"d/g")
    dirty.mark_heads(20, b"d")
    dirty.mark_clone(12, b"d/c", b"d/f")
    dirty.mark_regions(99, b"gone", RegionRange(0, 1))  # removed before it was copied
    moved = dirty.rekeyed({10: 110, 11: 111, 12: 112, 20: 120})
    assert [(r.first, r.count) for r in moved.ranges(110)] == [(3, 2)]
    assert moved.meta_dirty(111)
    assert not moved.meta_dirty(11)
    assert moved.dir_dirty(120)
    assert moved.heads_dirty(120)
    assert moved.hint(120) == b"d"
    assert moved.take_clone(112) == ClonedFrom(b"d/f")
    assert 99 not in moved.files()
    assert moved.hint(99) is None
    assert dirty.meta_dirty(11)  # the original is left as it was
