"""The spans a pull copies: what the two sides' records name, within the
replica's size, each byte once."""

from __future__ import annotations

import pytest

from fsrep._pull import _merged


@pytest.mark.parametrize(("spans", "size", "expected"), [
    ([], 100, []),
    ([(0, 10)], 100, [(0, 10)]),
    ([(50, 10), (0, 10)], 100, [(0, 10), (50, 10)]),  # sorted
    ([(0, 10), (5, 10), (15, 5)], 100, [(0, 20)]),  # overlapping and touching runs joined
    ([(90, 50)], 100, [(90, 10)]),  # clipped at the replica's size
    ([(100, 10), (200, 1)], 100, []),  # wholly past it: nothing
    ([(0, 0), (10, 0)], 100, []),  # empty spans
])
def test_spans_are_sorted_joined_and_clipped(spans: list[tuple[int, int]], size: int,
                                             expected: list[tuple[int, int]]) -> None:
    assert list(_merged(spans, size)) == expected
