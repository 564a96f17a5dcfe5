"""Which side is newer, from two generation histories."""

from __future__ import annotations

import pytest

from tracking.generations import (
    MAX_GENERATIONS,
    Verdict,
    compare,
    extend,
    new_generation,
    pack,
    unpack,
)

A, B, C, D = (bytes([n]) * 16 for n in range(1, 5))


@pytest.mark.parametrize(("primary", "replica", "verdict"), [
    ([A, B], [A, B], Verdict.SAME),
    ([A, B, C], [A, B], Verdict.PRIMARY_NEWER),  # we went OutOfSync (C); it stayed at B
    ([A], [A, B], Verdict.REPLICA_NEWER),  # it moved on from our A without us
    ([A, B], [A, C], Verdict.UNRELATED),  # both moved on from A: cannot tell
    ([A], [D], Verdict.UNRELATED),
    ([A], [], Verdict.NO_HISTORY),
    ([], [A], Verdict.UNRELATED),
])
def test_compare(primary: list[bytes], replica: list[bytes], verdict: Verdict) -> None:
    assert compare(primary, replica) is verdict


def test_history_keeps_the_newest() -> None:
    history: list[bytes] = []
    ids = [new_generation() for _ in range(MAX_GENERATIONS + 5)]
    for g in ids:
        history = extend(history, g)
    assert history == ids[-MAX_GENERATIONS:]
    assert len(set(ids)) == len(ids)


def test_pack_round_trips_and_rejects_garbage() -> None:
    assert unpack(pack([A, B])) == [A, B]
    assert unpack(b"") == []
    with pytest.raises(ValueError, match="at most 32 ids of 16 bytes"):
        unpack(b"x" * 17)
    with pytest.raises(ValueError, match="at most 32 ids of 16 bytes"):
        unpack(b"x" * 16 * (MAX_GENERATIONS + 1))
    with pytest.raises(ValueError, match="a generation id is 16 bytes"):
        extend([A], b"short")
