"""``fsrep top MOUNTPOINT``: ``fsrep status`` as a live view, asked of the
daemon once a second, so an operator watching a resync, a move or a busy
group sees it move without running status in a loop.

How this works: the loop asks the daemon for its status exactly as
``fsrep status`` does, renders it with ``view()`` (a pure function of the
previous status, the current one and the seconds between them: the rates
are differences of ``bytes_sent``), and waits for the next refresh in
``select`` on stdin, which wakes it early for a key. Only two statuses are
kept, however long it runs.

Caveats:
    The terminal is put in cbreak mode only when stdin is one, and restored
    on every way out (q, Ctrl-C, SIGTERM, the daemon gone, an error).
    When stdout is not a terminal the view is printed once, when it ends.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from ._args import Count
from ._control import ControlError, daemon_for
from ._notes import notes
from ._status import DaemonStatus, GroupStatus, SnapshotStatus

if TYPE_CHECKING:
    from rich.console import RenderableType

REFRESH = 1.0  # seconds between two asks of the daemon
QUIT = b"qQ"
ITERATIONS = Count(1, 10**9)
COLUMNS = ("group", "path", "state", "conn", "lag ops", "lag bytes", "lag s", "dirty", "sent", "sent/s",
           "common snapshot")
NUMBERS = {"lag ops", "lag bytes", "lag s", "dirty", "sent", "sent/s"}


def add_parser(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("top", help="a live view of each consistency group, refreshed every second",
                       formatter_class=fmt,
                       epilog="examples:\n  fsrep top /mnt/data\n"
                              "  fsrep top /mnt/data --iterations 1 | cat   # one view, for a script\n\n"
                              "each group's state, whether it is connected, its lag (operations, bytes,\n"
                              "seconds), dirty bytes, the data sent and its rate, the resync or move under\n"
                              "way and the newest snapshot both sides hold. q or Ctrl-C quits; when the\n"
                              "daemon goes away the view says so and exits 1.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--iterations", type=ITERATIONS, metavar="N",
                   help="exit after N views (default: run until q or Ctrl-C)")


def cmd_top(args: argparse.Namespace) -> int:
    """Show the live view until q, Ctrl-C or *args.iterations* views.

    Raises:
        ControlError: not an fsrep mount or no daemon answers (before the
            first view: as ``fsrep status`` says it), or the daemon went away
            while it was shown.
    """
    _, status = daemon_for(args.mountpoint)  # before the terminal changes: a wrong mount point is status's error
    from rich.console import Console
    from rich.live import Live
    console = Console() if sys.stdout.isatty() else Console(width=200)
    previous: DaemonStatus | None = None
    elapsed, asked = 0.0, time.monotonic()
    shown = 0
    try:
        with key_reader(sys.stdin.fileno()) as keys, Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(view(previous, status, elapsed, now=time.time(), hint=keys.hint), refresh=True)
                shown += 1
                if shown == args.iterations or keys.quit_before(asked + REFRESH):
                    return 0
                try:
                    _, current = daemon_for(args.mountpoint)
                except ControlError as exc:  # raised through the blocks: the view stops, the terminal is back
                    raise ControlError(f"lost the daemon of {args.mountpoint}: {exc}") from None
                now = time.monotonic()
                previous, status, elapsed, asked = status, current, now - asked, now
    except KeyboardInterrupt:
        return 0


# --- the view ----------------------------------------------------------------------


def view(previous: DaemonStatus | None, current: DaemonStatus, elapsed: float, *, now: float,
         hint: str = "q to quit") -> RenderableType:
    """The live view of *current*: one row per group, the groups' notes
    (``fsrep status``'s, but the snapshot, which the table shows with its
    age), and a footer naming the mount.

    Args:
        previous: the status shown *elapsed* seconds before, for the rates;
            None on the first view (and ignored if another daemon sent it).
        now: the time (seconds since the epoch) the snapshots' ages are
            counted to.
        hint: how to quit, for the footer.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text
    before = {} if previous is None or previous.pid != current.pid else {g.id: g for g in previous.groups}
    table = Table()
    for title in COLUMNS:
        table.add_column(title, overflow="fold", justify="right" if title in NUMBERS else "left")
    for group in current.groups:
        state = Text(group.state, style="green" if group.state == "InSync" else "bold yellow")
        table.add_row(group.id[:8], group.path, state, "yes" if group.connected else Text("no", style="bold red"),
                      str(group.ops_in_flight),
                      _size(group.lag_bytes), f"{group.lag_seconds:.1f}", _size(group.dirty_bytes),
                      _size(group.bytes_sent), _rate(before.get(group.id), group, elapsed),
                      _snapshot(group.snapshot, now))
    lines = [Text(f"group {group.id[:8]}: {line}") for group in current.groups
             for line in notes(dataclasses.replace(group, snapshot=None))]
    footer = Text(f"{current.mountpoint}  store {current.store}  pid {current.pid}  {hint}", style="dim")
    return Group(table, *lines, footer)


def _size(n: int) -> str:
    from rich.filesize import decimal
    return decimal(n)


def _rate(before: GroupStatus | None, group: GroupStatus, elapsed: float) -> str:
    """Bytes sent per second since *before*; "-" with nothing to compare."""
    if before is None or elapsed <= 0 or group.bytes_sent < before.bytes_sent:
        return "-"
    return f"{_size(int((group.bytes_sent - before.bytes_sent) / elapsed))}/s"


def _snapshot(snapshot: SnapshotStatus | None, now: float) -> str:
    if snapshot is None:
        return "-"
    return f"{snapshot.name} ({_age(now - snapshot.created)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


# --- keys --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Keys:
    """The keys typed at the terminal on *fd*, or none (*fd* is None: stdin
    is not a terminal, only Ctrl-C quits)."""

    fd: int | None

    @property
    def hint(self) -> str:
        return "Ctrl-C to quit" if self.fd is None else "q to quit"

    def quit_before(self, deadline: float) -> bool:
        """Wait until *deadline* (``time.monotonic()``); True as soon as q
        is typed or the terminal hangs up. Other keys are ignored."""
        while (left := deadline - time.monotonic()) > 0:
            if self.fd is None:
                time.sleep(left)
                return False
            readable, _, _ = select.select([self.fd], [], [], left)
            if not readable:
                return False
            typed = os.read(self.fd, 64)
            if not typed or any(key in QUIT for key in typed):
                return True
        return False


@contextlib.contextmanager
def key_reader(fd: int) -> Iterator[Keys]:
    """The keys typed on *fd*: a terminal is put in cbreak mode (each key
    read as typed, not echoed; Ctrl-C still interrupts) and given back as it
    was however the block ends, a SIGTERM included."""
    if not os.isatty(fd):
        yield Keys(None)
        return
    saved = termios.tcgetattr(fd)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        tty.setcbreak(fd)
        yield Keys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGTERM, previous)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that gives the terminal back
