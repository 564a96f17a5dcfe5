"""Region arithmetic and roaring-bitmap region sets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracking import REGION_SIZE, RegionOverflow, RegionRange, RegionSet, regions_for


def test_regions_for_covers_every_touched_region() -> None:
    assert regions_for(0, 1) == RegionRange(0, 1)
    assert regions_for(4095, 2) == RegionRange(0, 2)
    assert regions_for(REGION_SIZE, REGION_SIZE) == RegionRange(1, 1)
    assert regions_for(10, 0).count == 0


def test_region_numbers_beyond_32_bits_raise_instead_of_wrapping() -> None:
    with pytest.raises(RegionOverflow):
        regions_for(2**32 * REGION_SIZE, 1)
    with pytest.raises(RegionOverflow):
        RegionRange(2**32 - 1, 2)
    assert regions_for((2**32 - 1) * REGION_SIZE, REGION_SIZE) == RegionRange(2**32 - 1, 1)


def test_ranges_are_maximal_runs_in_order() -> None:
    regions = RegionSet()
    regions.add(RegionRange(10, 5))
    regions.add(RegionRange(3, 2))
    regions.add(RegionRange(15, 1))
    regions.discard(RegionRange(12, 1))
    assert list(regions.ranges()) == [RegionRange(3, 2), RegionRange(10, 2), RegionRange(13, 3)]
    assert len(regions) == 7 and 13 in regions and 12 not in regions
    assert str(RegionRange(3, 2)) == "regions[3..5)"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 500), st.integers(0, 40)), max_size=30))
def test_region_set_matches_a_plain_set(steps: list[tuple[bool, int, int]]) -> None:
    regions, model = RegionSet(), set()
    for add, first, count in steps:
        (regions.add if add else regions.discard)(RegionRange(first, count))
        (model.update if add else model.difference_update)(range(first, first + count))
    assert sorted(r for rr in regions.ranges() for r in range(rr.first, rr.stop)) == sorted(model)
