"""One resync run as the operator sees it: what was asked (mode, rate
limit), how far it got, how fast, and how it ended.

Pure bookkeeping — the caller passes the clock — so the arithmetic of rate,
ETA and the rate limit is unit-tested without a link or a filesystem.
"""

from __future__ import annotations

import collections
import os
import re
import threading
from dataclasses import dataclass, field

from ._status import MoveProgress, ResyncProgress

MODES = ("quick", "snapshot", "checksum", "full")
RATE_FLOOR = 1024 * 1024  # bytes/s: a rate limit below this would let a resync starve
RATE_WINDOW = 10.0  # seconds of history behind bytes_per_second
DIRECTORY_WEIGHT = 64 * 1024  # a directory to compare counts as this many bytes of work in the percentage


UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_rate(text: str) -> int:
    """``50M``, ``800k``, ``1048576`` (bytes or bytes/s, binary units) -> an int.

    Raises:
        ValueError: not a rate (the message says what is expected).
    """
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?B)?(?:/s)?\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: use bytes per second, e.g. 50M or 800k")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


class RunRefused(Exception):
    """A run cannot do what it was asked, and changed nothing: it ends with
    this reason, the link kept (the next run would be refused the same)."""


def clamp_rate(rate_limit: int) -> int:
    """A rate limit as applied: 0 (none) or at least RATE_FLOOR."""
    return max(rate_limit, RATE_FLOOR) if rate_limit else 0


def stronger(a: str, b: str) -> str:
    """The mode that does at least what both do (full > checksum > snapshot > quick)."""
    return max(a, b, key=MODES.index)


@dataclass(slots=True)
class ResyncRun:
    """A resync asked for by the daemon itself or by ``fsrep-resync``.

    ``outcome`` is "" while the run is queued or running, then "InSync" or
    the reason it failed. ``rate_limit`` is bytes/s of data, 0 for none.
    """

    id: int
    mode: str
    reason: str
    rate_limit: int = 0
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    outcome: str = ""
    verified: bool = False
    restarts: int = 0
    copied_bytes: int = 0  # data sent to the replica
    checked_bytes: int = 0  # data compared by digest (checksum mode)
    check_total: int = 0  # data to compare by digest
    mismatched_bytes: int = 0
    copy_total: int = 0  # full mode: the data the copy will send
    dirs_checked: int = 0  # directories compared with the replica's
    clones_replayed: int = 0  # files cloned while out of sync that the replica cloned too (then compared)
    bytes_replayed: int = 0  # their size: data that did not cross the link as data
    entries_checked: int = 0  # the entries of those directories
    last_progress: float = 0.0
    routine: bool = False  # started by policy async on its schedule: logged at debug level
    basis: str = ""  # mode snapshot: the snapshot the run resyncs from (asked for, or once chosen)
    based: bool = False  # what may differ since the snapshot is in the dirty set: a restart need not add it again
    keep_divergent: bool = False  # split brain: the replica's changes since the snapshot are copied out first
    pull_into: str = ""  # split brain, the primary's side given up: the group's directory in the mount
    kept: str = ""  # where the side given up was copied, once it was
    kept_side: str = ""  # "primary" or "secondary"
    pulled: bool = False  # the primary's side given up: the secondary's is taken (the run then sends it back)
    restore: bytes = b""  # --path --from secondary: the file made here as the replica holds it, first
    restore_into: str = ""  # ... the group's directory in the mount, where it is made
    restored: bool = False  # ... once it was
    _done_at_start: int = 0
    _allowance: float = 0.0
    _allowance_at: float = 0.0
    _samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"resync mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        self.rate_limit = clamp_rate(self.rate_limit)

    @property
    def running(self) -> bool:
        return self.started_at is not None and self.finished_at is None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def start(self, now: float) -> None:
        self.started_at = self.last_progress = self._allowance_at = now
        self._done_at_start = self.done_bytes()
        self._samples.clear()
        self._samples.append((now, self.done_bytes()))

    def progressed(self, now: float) -> None:
        """Something moved (a frame sent, an ack received): the watchdog's
        clock restarts."""
        self.last_progress = now

    def copied(self, nbytes: int, now: float) -> None:
        self.copied_bytes += nbytes
        self.last_progress = now
        self._sample(now)

    def checked(self, nbytes: int, mismatched: int, now: float) -> None:
        self.checked_bytes += nbytes
        self.mismatched_bytes += mismatched
        self.last_progress = now
        self._sample(now)

    def replayed_clone(self, nbytes: int) -> None:
        self.clones_replayed += 1
        self.bytes_replayed += nbytes

    def compared_directory(self, entries: int, now: float) -> None:
        self.dirs_checked += 1
        self.entries_checked += entries
        self.last_progress = now

    def finish(self, outcome: str, now: float, *, verified: bool = False) -> None:
        self.outcome = outcome
        self.verified = verified
        self.finished_at = now

    def pause_for(self, nbytes: int, now: float) -> float:
        """Seconds to wait before sending *nbytes* more under the rate limit
        (a token bucket holding at most one second of allowance)."""
        if not self.rate_limit:
            return 0.0
        self._allowance = min(self._allowance + (now - self._allowance_at) * self.rate_limit, self.rate_limit)
        self._allowance_at = now
        self._allowance -= nbytes
        return max(0.0, -self._allowance / self.rate_limit)

    def done_bytes(self) -> int:
        return self.copied_bytes + self.checked_bytes

    def remaining_bytes(self, dirty_bytes: int) -> int:
        """What is left: dirty data still to copy, data still to compare,
        and for a full copy what it has not sent yet."""
        left = dirty_bytes + max(self.check_total - self.checked_bytes, 0)
        if self.mode == "full" and not self.finished:
            left = max(left, self.copy_total - self.copied_bytes)
        return 0 if self.outcome == "InSync" else left

    def _sample(self, now: float) -> None:
        if not self._samples or now - self._samples[-1][0] >= RATE_WINDOW / 40:
            self._samples.append((now, self.done_bytes()))
        while now - self._samples[0][0] > RATE_WINDOW:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        """Bytes/s (copied + compared) over about the last RATE_WINDOW
        seconds; since the start while there is less history than a second."""
        self._sample(now)
        then, before = self._samples[0]
        if now - then < 1.0 and self.started_at is not None:
            then, before = self.started_at, self._done_at_start
        return (self.done_bytes() - before) / (now - then) if now > then else 0.0

    def snapshot(self, dirty_bytes: int, now: float, dirty_dirs: int = 0) -> ResyncProgress:
        """This run as status shows it. While directories are left to
        compare (*dirty_dirs*; the bytes to copy are not all known yet),
        the ETA counts them at the rate directories have gone so far, and
        each counts DIRECTORY_WEIGHT bytes in the percentage."""
        remaining = self.remaining_bytes(dirty_bytes)
        dirs_left = 0 if self.outcome == "InSync" else dirty_dirs
        rate = self.rate(now) if self.running else 0.0
        done = self.done_bytes()
        if self.outcome == "InSync":
            percent = 100.0
        else:
            work_done = done + self.dirs_checked * DIRECTORY_WEIGHT
            work_left = remaining + dirs_left * DIRECTORY_WEIGHT
            percent = 100.0 * work_done / (work_done + work_left) if work_done + work_left else 0.0
        end = self.finished_at if self.finished_at is not None else now
        return ResyncProgress(
            id=self.id,
            mode=self.mode,
            reason=self.reason,
            running=self.running,
            finished=self.finished,
            outcome=self.outcome,
            verified=self.verified,
            restarts=self.restarts,
            rate_limit=self.rate_limit,
            bytes_copied=self.copied_bytes,
            bytes_checked=self.checked_bytes,
            bytes_mismatched=self.mismatched_bytes,
            bytes_remaining=remaining,
            bytes_per_second=round(rate),
            directories_checked=self.dirs_checked,
            directories_remaining=dirs_left,
            entries_checked=self.entries_checked,
            clones_replayed=self.clones_replayed,
            bytes_replayed_as_clones=self.bytes_replayed,
            eta_seconds=self._eta(remaining, rate, dirs_left, now),
            percent=round(percent, 1),
            elapsed_seconds=round(end - self.started_at, 3) if self.started_at is not None else 0.0,
            snapshot=self.basis,
            kept=self.kept,
            kept_side=self.kept_side,
            restored="/" + os.fsdecode(self.restore) if self.restored else "",
        )

    def _eta(self, remaining: int, rate: float, dirs_left: int, now: float) -> float | None:
        """Seconds left; None when not known (no rate yet)."""
        if not remaining and not dirs_left:
            return 0.0
        eta = 0.0
        if dirs_left:
            elapsed = now - self.started_at if self.started_at is not None else 0.0
            if not self.dirs_checked or elapsed <= 0:
                return None
            eta += dirs_left * elapsed / self.dirs_checked
        if remaining:
            if rate <= 0:
                return None
            eta += remaining / rate
        return round(eta, 1)


@dataclass(slots=True)
class MoveRun:
    """A move of a group's data to another file system (``_move_across``).

    The copy runs in a worker thread, which adds to ``copied_bytes`` (an
    int's ``+=`` under the GIL) and reads ``abort``, which the operator's
    ``fsrep-move --abort`` sets; the rest is set from the event loop."""

    source: str
    destination: str
    started_at: float
    total_bytes: int = 0
    copied_bytes: int = 0
    phase: str = "copying"
    passes: int = 0
    pause_seconds: float = 0.0
    outcome: str = ""  # "" while under way, then "done", "aborted" or "failed: why"
    finished_at: float | None = None
    abort: threading.Event = field(default_factory=threading.Event)

    def copied(self, nbytes: int) -> None:
        self.copied_bytes += nbytes

    def finish(self, outcome: str, now: float) -> None:
        self.outcome, self.phase, self.finished_at = outcome, outcome.partition(":")[0], now

    def snapshot(self, now: float) -> MoveProgress:
        end = self.finished_at if self.finished_at is not None else now
        elapsed = end - self.started_at
        rate = self.copied_bytes / elapsed if elapsed > 0 else 0.0
        left = max(0, self.total_bytes - self.copied_bytes)
        eta = None if self.finished_at is not None or rate <= 0 or self.phase != "copying" else left / rate
        return MoveProgress(source=self.source, destination=self.destination, phase=self.phase,
                            finished=self.finished_at is not None, outcome=self.outcome,
                            bytes_copied=self.copied_bytes, bytes_total=self.total_bytes,
                            bytes_per_second=int(rate), eta_seconds=None if eta is None else round(eta, 1),
                            passes=self.passes, pause_seconds=round(self.pause_seconds, 4),
                            seconds=round(elapsed, 3))
