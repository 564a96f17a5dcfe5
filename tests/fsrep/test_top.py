"""``fsrep top``: the view built from constructed statuses, the keys read
from a pseudo terminal, and the real command in one, over a real mount."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from fsrep import DaemonStatus, GroupStatus, MoveProgress, ResyncProgress, SnapshotStatus
from fsrep._top import key_reader, view
from tests.conftest import DEADLINE, FSREP, Cluster, run_fsrep, write_random

NOW = 1_700_000_000.0
ROWS, COLS = 40, 320  # wide enough that no cell of the table folds
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
FOOTER = "q to quit"
TERMINAL_ENV = ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")  # rich reads them


def _group(**changes: object) -> GroupStatus:
    group = GroupStatus(
        id="0123456789abcdef", path="/", state="InSync", policy="sync", secondary="127.0.0.1:1", connected=True,
        last_acked_seq=12, ops_in_flight=0, lag_bytes=0, lag_seconds=0.0, bytes_in_flight=0, dirty_bytes=0,
        bytes_remaining=0, bytes_per_second=0, eta_seconds=None, percent=100.0, resync=None, resync_queued=None,
        resync_recent=(), resync_bytes_sent=0, bytes_cloned=0, last_resync_seconds=0.0, generation="ab" * 8,
        stale_reason="", last_error="", faults=(), internal_errors=0, snapshot=None, bytes_sent=1000)
    return dataclasses.replace(group, **changes)


def _daemon(*groups: GroupStatus, pid: int = 42) -> DaemonStatus:
    return DaemonStatus(pid=pid, store="/srv/data", mountpoint="/mnt/data", groups=groups or (_group(),))


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=240, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def _row(text: str, short_id: str) -> dict[str, str]:
    """The cells of the group *short_id*'s row in a rendered table, by
    column title; none if the text has no such row."""
    lines = text.splitlines()
    header = next((line for line in lines if "┃" in line and " group " in line), None)
    row = next((line for line in lines if "│" in line and short_id in line), None)
    if header is None or row is None:
        return {}
    titles = [cell.strip() for cell in header.split("┃")[1:-1]]
    return dict(zip(titles, (cell.strip() for cell in row.split("│")[1:-1]), strict=True))


# --- the view ------------------------------------------------------------------------


def test_the_first_view_shows_each_group_and_no_rate_yet() -> None:
    text = _text(view(None, _daemon(), 0.0, now=NOW))
    row = _row(text, "01234567")
    assert row["path"] == "/"
    assert row["state"] == "InSync"
    assert row["conn"] == "yes"
    assert row["sent"] == "1.0 kB"
    assert row["sent/s"] == "-"
    assert row["common snapshot"] == "-"
    assert "0123456789abcdef" not in text  # the short id only
    assert text.rstrip().splitlines()[-1] == "/mnt/data  store /srv/data  pid 42  q to quit"


def test_the_rate_is_the_difference_of_bytes_sent_over_the_seconds_between() -> None:
    before = _daemon(_group(bytes_sent=1000))
    after = _daemon(_group(bytes_sent=3_001_000, ops_in_flight=3, lag_bytes=2_000_000, lag_seconds=0.3,
                           dirty_bytes=5_000_000, connected=False, state="Degraded"))
    row = _row(_text(view(before, after, 2.0, now=NOW)), "01234567")
    assert row["sent/s"] == "1.5 MB/s"
    assert (row["lag ops"], row["lag bytes"], row["lag s"], row["dirty"]) == ("3", "2.0 MB", "0.3", "5.0 MB")
    assert (row["state"], row["conn"]) == ("Degraded", "no")
    assert _row(_text(view(before, before, 1.0, now=NOW)), "01234567")["sent/s"] == "0 bytes/s"


@pytest.mark.parametrize(("previous", "elapsed"), [
    (_daemon(pid=41), 1.0),  # another daemon: its counters are not these
    (_daemon(_group(id="another-group")), 1.0),  # the group is new
    (_daemon(_group(bytes_sent=5000)), 1.0),  # a counter that went back
    (_daemon(), 0.0),
])
def test_no_rate_without_a_like_previous_status(previous: DaemonStatus, elapsed: float) -> None:
    assert _row(_text(view(previous, _daemon(), elapsed, now=NOW)), "01234567")["sent/s"] == "-"


def test_a_running_resync_and_move_are_noted_as_status_notes_them_and_the_snapshot_has_its_age() -> None:
    resync = ResyncProgress(
        id=3, mode="checksum", reason="asked", running=True, finished=False, outcome="", verified=False,
        restarts=0, rate_limit=0, bytes_copied=10, bytes_checked=20, bytes_mismatched=4, bytes_remaining=70,
        bytes_per_second=5, directories_checked=0, directories_remaining=0, entries_checked=9, eta_seconds=14.0,
        percent=30.0, elapsed_seconds=1.5, snapshot="")
    move = MoveProgress(source="/srv/data/vm", destination="/disk2/vm", phase="copying", finished=False, outcome="",
                        bytes_copied=100, bytes_total=400, bytes_per_second=50, eta_seconds=6.0, passes=1,
                        pause_seconds=0.0, seconds=2.0)
    snapshot = SnapshotStatus(name="before-upgrade", created=NOW - 300, generation="cd" * 16, seq=9, auto=False,
                              common=True, changed_bytes=0)
    group = _group(state="Resyncing", resync=resync, move=move, snapshot=snapshot, stale_reason="link lost")
    text = _text(view(None, _daemon(group), 0.0, now=NOW))
    assert "group 01234567: checksum resync 30.0%: 70 bytes left at 5 bytes/s, ETA 14s" in text
    assert "group 01234567: moving to /disk2/vm: copying, 100 of 400 bytes copied at 50 bytes/s, ETA 6s" in text
    assert "group 01234567: replica needs a resync: link lost" in text
    assert _row(text, "01234567")["common snapshot"] == "before-upgrade (5m ago)"
    assert "newest common snapshot" not in text  # the table says it, once
    assert "resync" not in _text(view(None, _daemon(_group(resync=dataclasses.replace(resync, running=False))),
                                      0.0, now=NOW))


def test_every_group_has_its_row() -> None:
    groups = (_group(), _group(id="fedcba9876543210", path="/vms/vm1", state="Resyncing"))
    text = _text(view(None, _daemon(*groups), 0.0, now=NOW, hint="Ctrl-C to quit"))
    assert _row(text, "fedcba98")["path"] == "/vms/vm1"
    assert _row(text, "01234567")["path"] == "/"
    assert text.rstrip().endswith("Ctrl-C to quit")


# --- the keys ------------------------------------------------------------------------


def test_keys_are_read_in_cbreak_mode_and_the_terminal_is_given_back() -> None:
    master, slave = pty.openpty()
    try:
        before = termios.tcgetattr(slave)
        with key_reader(slave) as keys:
            assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO)
            assert keys.hint == "q to quit"
            started = time.monotonic()
            assert not keys.quit_before(started + 0.05)  # no key: it waits the time out
            assert time.monotonic() - started >= 0.05
            os.write(master, b"x")
            assert not keys.quit_before(time.monotonic() + 0.05)  # another key is ignored
            os.write(master, b"q")
            assert keys.quit_before(time.monotonic() + DEADLINE)
        assert termios.tcgetattr(slave) == before
        with pytest.raises(KeyboardInterrupt), key_reader(slave):
            raise KeyboardInterrupt
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_without_a_terminal_no_key_is_read(tmp_path: Path) -> None:
    with open(tmp_path / "input", "w+") as f, key_reader(f.fileno()) as keys:
        assert keys.fd is None
        assert keys.hint == "Ctrl-C to quit"
        assert not keys.quit_before(time.monotonic() + 0.01)


# --- the command ---------------------------------------------------------------------


@dataclass
class Terminal:
    """``fsrep top`` running in a pseudo terminal, and what it printed."""

    master: int
    slave: int
    proc: subprocess.Popen
    mode: list  # the slave's attributes before top started
    output: str = ""
    seen: int = field(default=0)  # frames a wait already looked at

    def frames(self) -> list[str]:
        """The complete views printed so far (each ends with the footer)."""
        return ESCAPE.sub("", self.output).split(FOOTER)[:-1]

    def wait_frame(self, predicate: Callable[[str], bool], what: str, timeout: float = DEADLINE) -> str:
        """The first view not looked at yet that satisfies *predicate*."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.frames()
            for i in range(self.seen, len(frames)):
                if predicate(frames[i]):
                    self.seen = i + 1
                    return frames[i]
            self.seen = len(frames)
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"no view showed {what} (exit {self.proc.poll()}); the last: "
                                     f"{frames[-1] if frames else self.output!r}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                self.output += os.read(self.master, 65536).decode(errors="replace")


@contextlib.contextmanager
def _top(mnt: Path, *, stderr: int | None = None) -> Iterator[Terminal]:
    """``fsrep top MNT`` with its stdin and stdout (and stderr, unless
    given) on a new pseudo terminal of ROWS x COLS; killed at the end."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    env = {name: value for name, value in os.environ.items() if name not in TERMINAL_ENV} | {"TERM": "xterm"}
    proc = subprocess.Popen([*FSREP, "top", str(mnt)], stdin=slave, stdout=slave,
                            stderr=slave if stderr is None else stderr, env=env)
    try:
        yield Terminal(master, slave, proc, termios.tcgetattr(slave))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)
        os.close(master)
        os.close(slave)


def test_top_shows_the_group_live_and_q_quits_giving_the_terminal_back(mounted: Cluster) -> None:
    short_id = mounted.status()["id"][:8]
    with _top(mounted.mnt) as term:
        first = term.wait_frame(lambda f: _row(f, short_id).get("state") == "InSync", "InSync")
        assert f"{mounted.mnt}  store {mounted.primary_store}  pid {mounted.primary_pid()}" in first
        assert not termios.tcgetattr(term.slave)[3] & termios.ICANON  # cbreak while it runs
        sent = _row(first, short_id)["sent"]
        write_random(mounted.mnt / "data", 2)  # sync: replicated when close returns
        moved = term.wait_frame(lambda f: _row(f, short_id).get("sent/s", "-") not in ("-", "0 bytes/s"),
                                "a rate of data sent")
        assert _row(moved, short_id)["sent"] != sent
        assert "MB" in _row(moved, short_id)["sent"]
        os.write(term.master, b"q")
        assert term.proc.wait(timeout=DEADLINE) == 0
        assert termios.tcgetattr(term.slave) == term.mode
        assert "Traceback" not in term.output


def test_top_says_in_one_line_when_the_daemon_goes_away(mounted: Cluster) -> None:
    with _top(mounted.mnt, stderr=subprocess.PIPE) as term:
        term.wait_frame(lambda f: "InSync" in f, "InSync")
        mounted.umount()
        assert term.proc.wait(timeout=DEADLINE) == 1
        lines = term.proc.stderr.read().decode().strip().splitlines()
        term.proc.stderr.close()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"fsrep top: error: lost the daemon of {mounted.mnt}: "), lines
        assert termios.tcgetattr(term.slave) == term.mode


def test_a_wrong_mount_point_is_the_error_status_gives(tmp_path: Path) -> None:
    top = run_fsrep("top", str(tmp_path), check=False)
    status = run_fsrep("status", str(tmp_path), check=False)
    assert top.returncode == status.returncode == 1
    assert top.stderr == status.stderr.replace("fsrep status:", "fsrep top:")
    assert len(top.stderr.strip().splitlines()) == 1
    assert "not an fsrep mount" in top.stderr


def test_without_a_terminal_top_shows_n_views_then_exits(mounted: Cluster) -> None:
    done = subprocess.run([*FSREP, "top", str(mounted.mnt), "--iterations", "2"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    assert "InSync" in done.stdout
    assert " ".join(done.stdout.split()).endswith("Ctrl-C to quit")


def test_top_has_help_with_an_example() -> None:
    assert "fsrep top /mnt/data" in run_fsrep("top", "--help").stdout
