"""A dirty directory whose comparison a client's change cut short is
compared next with clients' changes held, so a directory clients keep
changing cannot keep a resync going. (The mount test in test_link shows
the resync ending under writers; this pins the decision itself, which
depends on when clients get in.)"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from fsrep._resync import QuickResync


class _Stream:
    """What the decision uses of a ResyncStream: the gate, and the record."""

    def __init__(self) -> None:
        self.record = SimpleNamespace(id="g")
        self.holding = False

    @contextlib.contextmanager
    def holding_mutations(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False


def _resync(outcomes: list[int | None], *, moved: bool = False) -> tuple[QuickResync, list[bool]]:
    """A QuickResync whose comparisons end as *outcomes* say (None: cut
    short); the list says, per comparison, whether clients were held."""
    stream = _Stream()
    run: Any = QuickResync.__new__(QuickResync)
    run.stream, run._contended = stream, {}
    held: list[bool] = []

    async def reconcile(ino: int, path: bytes, secondary: dict) -> int | None:
        held.append(stream.holding)
        return outcomes[len(held) - 1]

    run._reconcile = reconcile
    run.resolve = lambda ino: b"elsewhere" if moved else b"spool"
    return run, held


def test_after_a_comparison_cut_short_by_clients_the_next_holds_them(caplog: pytest.LogCaptureFixture) -> None:
    run, held = _resync([None, 7, 5])

    async def main() -> list[int | None]:
        return [await run._reconcile_converging(3, b"spool", {}) for _ in range(3)]

    with caplog.at_level(logging.INFO, logger="fsrep._resync"):
        assert trio.run(main) == [None, 7, 5]
    assert held == [False, True, False]  # held once, then clients are let in again
    assert caplog.messages == ["group g: directory '/spool' changed while it was compared; comparing it again with "
                               "clients' changes held"]


def test_a_directory_that_moved_meanwhile_is_not_held_for() -> None:
    run, held = _resync([None, None, 1], moved=True)

    async def main() -> None:
        for _ in range(3):
            await run._reconcile_converging(3, b"spool", {})

    trio.run(main)
    assert held == [False, False, False]  # a move is not a client racing the comparison: found again where it is
