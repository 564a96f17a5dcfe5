"""Region arithmetic and roaring-bitmap region sets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracking import REGION_SIZE, RegionOverflow, RegionRange, RegionSet, region_digests, regions_for
from tracking._regions import MAX_REGIONS

LAST = MAX_REGIONS - 1


@pytest.mark.parametrize(("offset", "length", "expected"), [
    (0, 1, RegionRange(0, 1)),
    (0, REGION_SIZE, RegionRange(0, 1)),
    (0, REGION_SIZE + 1, RegionRange(0, 2)),
    (REGION_SIZE - 1, 1, RegionRange(0, 1)),
    (REGION_SIZE - 1, 2, RegionRange(0, 2)),
    (REGION_SIZE, REGION_SIZE, RegionRange(1, 1)),
    (10 * REGION_SIZE + 5, 3 * REGION_SIZE, RegionRange(10, 4)),
    (LAST * REGION_SIZE, REGION_SIZE, RegionRange(LAST, 1)),
])
def test_regions_for_covers_exactly_the_touched_regions(offset: int, length: int, expected: RegionRange) -> None:
    assert regions_for(offset, length) == expected


def test_regions_for_honours_the_region_size() -> None:
    assert regions_for(100, 100, region_size=64) == RegionRange(1, 3)
    assert regions_for(2**20, 1, region_size=2**20) == RegionRange(1, 1)


@pytest.mark.parametrize("offset", [0, 10, REGION_SIZE * 7, MAX_REGIONS * REGION_SIZE, 2**63])
def test_zero_length_touches_no_region_and_never_overflows(offset: int) -> None:
    assert regions_for(offset, 0).count == 0
    assert regions_for(offset, -1).count == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**40), st.integers(1, 2**24), st.sampled_from([512, 4096, 65536]))
def test_regions_for_matches_byte_by_byte_arithmetic(offset: int, length: int, size: int) -> None:
    regions = regions_for(offset, length, size)
    assert regions.first == offset // size
    assert regions.stop - 1 == (offset + length - 1) // size
    assert regions.first * size <= offset < regions.stop * size
    assert regions.first * size < offset + length <= regions.stop * size


def test_region_numbers_beyond_32_bits_raise_instead_of_wrapping() -> None:
    with pytest.raises(RegionOverflow):
        regions_for(MAX_REGIONS * REGION_SIZE, 1)
    with pytest.raises(RegionOverflow):
        regions_for(LAST * REGION_SIZE, REGION_SIZE + 1)  # starts in the last region, ends past it
    with pytest.raises(RegionOverflow):
        regions_for(2**64, 1)
    with pytest.raises(RegionOverflow):
        RegionRange(LAST, 2)
    with pytest.raises(RegionOverflow):
        RegionRange(MAX_REGIONS, 1)


def test_region_overflow_is_a_value_error() -> None:
    assert issubclass(RegionOverflow, ValueError)


@pytest.mark.parametrize(("first", "count"), [(-1, 1), (0, -1), (-5, 0)])
def test_negative_ranges_are_refused(first: int, count: int) -> None:
    with pytest.raises(RegionOverflow):
        RegionRange(first, count)


def test_range_has_a_stop_and_prints_half_open() -> None:
    assert RegionRange(3, 2).stop == 5
    assert str(RegionRange(3, 2)) == "regions[3..5)"


def test_empty_set_has_no_ranges() -> None:
    regions = RegionSet()
    assert len(regions) == 0
    assert list(regions.ranges()) == []
    assert 0 not in regions


def test_ranges_are_maximal_runs_in_order() -> None:
    regions = RegionSet()
    regions.add(RegionRange(10, 5))
    regions.add(RegionRange(3, 2))
    regions.add(RegionRange(15, 1))
    regions.discard(RegionRange(12, 1))
    assert list(regions.ranges()) == [RegionRange(3, 2), RegionRange(10, 2), RegionRange(13, 3)]
    assert len(regions) == 7
    assert 13 in regions
    assert 12 not in regions


def test_adding_and_discarding_empty_ranges_changes_nothing() -> None:
    regions = RegionSet()
    regions.add(RegionRange(4, 0))
    assert len(regions) == 0
    regions.add(RegionRange(4, 2))
    regions.discard(RegionRange(4, 0))
    regions.discard(RegionRange(100, 5))  # not there: fine
    assert list(regions.ranges()) == [RegionRange(4, 2)]


def test_overlapping_adds_merge() -> None:
    regions = RegionSet()
    regions.add(RegionRange(0, 10))
    regions.add(RegionRange(5, 10))
    assert list(regions.ranges()) == [RegionRange(0, 15)]
    assert len(regions) == 15


def test_the_last_region_of_a_64_bit_offset_is_held_without_wrapping() -> None:
    regions = RegionSet()
    regions.add(regions_for(LAST * REGION_SIZE, 1))
    assert LAST in regions
    assert 0 not in regions
    assert list(regions.ranges()) == [RegionRange(LAST, 1)]
    regions.add(RegionRange(LAST - 2, 2))
    assert list(regions.ranges()) == [RegionRange(LAST - 2, 3)]


def test_a_large_range_is_added_at_once() -> None:
    regions = RegionSet()
    regions.add(RegionRange(0, 2**24))
    regions.discard(RegionRange(1, 2**24 - 2))
    assert list(regions.ranges()) == [RegionRange(0, 1), RegionRange(2**24 - 1, 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 500), st.integers(0, 40)), max_size=30))
def test_region_set_matches_a_plain_set(steps: list[tuple[bool, int, int]]) -> None:
    regions, model = RegionSet(), set()
    for add, first, count in steps:
        (regions.add if add else regions.discard)(RegionRange(first, count))
        (model.update if add else model.difference_update)(range(first, first + count))
    assert len(regions) == len(model)
    assert all(r in regions for r in model)
    runs = list(regions.ranges())
    assert sorted(r for rr in runs for r in range(rr.first, rr.stop)) == sorted(model)
    assert all(rr.count > 0 for rr in runs)
    assert all(a.stop < b.first for a, b in zip(runs, runs[1:], strict=False)), "runs are not maximal or ordered"


def test_region_digests_tell_regions_apart() -> None:
    data = bytes(4096) + b"x" * 4096 + b"tail"
    digests = region_digests(data, 4)
    parts = [digests[i * 8:(i + 1) * 8] for i in range(4)]
    assert len(digests) == 32
    assert parts[0] == region_digests(bytes(4096), 1)
    assert len(set(parts)) == 4  # zeros, x's, a short tail, and nothing
    assert parts[3] == region_digests(b"", 1)


@pytest.mark.parametrize("first", [0, 2**32 - 3, 5 * 2**32 + 7])
def test_runs_cross_chunk_boundaries_whole(first: int) -> None:
    regions = RegionSet()
    regions.add(RegionRange(first, 3 * 2**32))  # at least one whole chunk in the middle
    assert list(regions.ranges()) == [RegionRange(first, 3 * 2**32)]
    assert len(regions) == 3 * 2**32
    regions.discard(RegionRange(first + 2**32, 1))
    assert list(regions.ranges()) == [RegionRange(first, 2**32), RegionRange(first + 2**32 + 1, 2 * 2**32 - 1)]
    assert regions.count(RegionRange(first, 3 * 2**32)) == 3 * 2**32 - 1


def test_ranges_from_a_start_cut_the_run_that_spans_it() -> None:
    regions = RegionSet()
    regions.add(RegionRange(10, 10))
    regions.add(RegionRange(2**33, 5))
    assert list(regions.ranges(15)) == [RegionRange(15, 5), RegionRange(2**33, 5)]
    assert list(regions.ranges(20)) == [RegionRange(2**33, 5)]
    assert list(regions.ranges(2**33 + 4)) == [RegionRange(2**33 + 4, 1)]
    assert list(regions.ranges(2**34)) == []


def test_the_whole_64_bit_range_costs_a_dict_of_chunks() -> None:
    regions = RegionSet()
    regions.add(RegionRange(0, MAX_REGIONS))
    assert len(regions) == MAX_REGIONS
    assert list(regions.ranges()) == [RegionRange(0, MAX_REGIONS)]
    assert regions.overlaps(RegionRange(LAST, 1))
    regions.discard(RegionRange(0, MAX_REGIONS))
    assert not regions


def test_long_runs_and_scattered_regions_each_cost_a_step_per_run() -> None:
    regions = RegionSet()
    for i in range(0, 2000, 2):
        regions.add(RegionRange(i, 1))
    regions.add(RegionRange(10**6, 10**9))
    runs = list(regions.ranges())
    assert len(runs) == 1001
    assert runs[-1] == RegionRange(10**6, 10**9)
    assert regions.count(RegionRange(0, 2000)) == 1000
