"""Reading a command line the way every fsrep command does: a usage error
is one line, like every other error, and every number option is read by
one validator that names the option, the value and what is allowed.

A number that is not finite (``nan``, ``inf``) or far out of range would
be accepted by ``float()`` and fail later, inside every session of the
daemon; here it fails before anything starts."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Literal, NoReturn

from ._progress import parse_rate

DAY = 86400.0
GiB = 1024**3


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line that points at ``--help``
    (subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


@dataclass(frozen=True, slots=True)
class Number:
    """The values a number option allows, from *low* to *high*. *unit* is
    ``seconds`` (a decimal number), ``bytes`` or ``bytes/s`` (a whole number,
    with an optional suffix k, M or G). Used as an argparse ``type``."""

    unit: Literal["seconds", "bytes", "bytes/s"]
    low: float
    high: float

    def __call__(self, text: str) -> float:
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def parse(self, text: str) -> float:
        """The value of *text*.

        Raises:
            ValueError: not a finite number of this unit in range (the
                message quotes *text* and says what is allowed).
        """
        try:
            value = float(text) if self.unit == "seconds" else parse_rate(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise ValueError(f"{text!r} is not {self.allowed}")
        return value

    @property
    def allowed(self) -> str:
        if self.unit == "seconds":
            return f"a number of seconds from {self.low:g} to {self.high:g}"
        what = "a rate" if self.unit == "bytes/s" else "a size"
        return f"{what} from {_size(self.low)} to {_size(self.high)} {self.unit} (a whole number, suffix k, M or G)"


def _size(value: float) -> str:
    for suffix, unit in (("G", GiB), ("M", 1024**2), ("k", 1024)):
        if value and value % unit == 0:
            return f"{int(value // unit)}{suffix}"
    return f"{int(value)}"


# Every number option of the commands, and what it allows.
ACK_TIMEOUT = Number("seconds", 0.1, DAY)
ASYNC_INTERVAL = Number("seconds", 0.1, DAY)
RESYNC_STALL_TIMEOUT = Number("seconds", 1, DAY)
LAG_BUDGET = Number("bytes", 0, GiB)  # what is unacknowledged is held in memory
RATE_LIMIT = Number("bytes/s", 0, 1024 * GiB)  # 0: none; a limit below RATE_FLOOR is raised to it
SNAPSHOT_INTERVAL = Number("seconds", 0, 366 * DAY)  # 0: no scheduled snapshots
UNDO_LIMIT = Number("bytes", 1024**2, 1024**4)  # old data a replica's undo log may keep during a resync


@dataclass(frozen=True, slots=True)
class Count:
    """A whole number from *low* to *high* (an argparse ``type``)."""

    low: int
    high: int

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = self.low - 1
        if not self.low <= value <= self.high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {self.low} to {self.high}")
        return value


SNAPSHOT_KEEP = Count(1, 60)  # scheduled snapshots kept (a group holds at most 64)


def snapshot_name(text: str) -> str:
    """A snapshot's name as an argparse ``type``: refused before anything is sent."""
    from tracking import SnapshotError, check_name
    try:
        return check_name(text)
    except SnapshotError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
