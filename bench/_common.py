"""Shared machinery for the benchmarks: a work directory, a secondary (on
127.0.0.1 unless told otherwise; it can be stopped and started again, as an
outage), primaries mounted through the real ``fsrep`` CLI (either one run
through ``nsenter`` when it must live in a network namespace), and cleanup
of every process and mount started, also on errors, Ctrl-C and SIGTERM.

Cleanup of a primary, in order: ``fsrep umount``; SIGTERM (then SIGKILL) to
a daemon of that store still alive (found by its command line, so a daemon
whose ``fsrep mount`` was interrupted is found too); ``fusermount3 -u -z``
as the last resort. The secondary gets SIGTERM,
then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fsrep._digest import tree_differences

FSREP = [sys.executable, "-m", "fsrep"]
UNREACHABLE = "127.0.0.1:1"  # nothing listens there: "local passthrough, no secondary"
CLI_TIMEOUT = 180.0  # umount drains; a mount may run a resync first
START_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0  # the primary drains for at most 30 s on SIGTERM


class BenchError(Exception):
    """A set-up step failed; the message says which and where to look."""


# --- interrupts ------------------------------------------------------------------
#
# SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt so that every ``finally``
# runs. Inside ``shielded()`` (cleanup) the interrupt is held back and raised
# when the outermost shielded block ends, so cleanup is never cut half-way;
# every cleanup step has its own timeout.

_shield_depth = 0
_pending_signal: int | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending_signal
    if _shield_depth:
        if _pending_signal is None:
            print(f"\n{signal.Signals(signum).name}: cleaning up first (mounts, daemons)...",
                  file=sys.stderr, flush=True)
        _pending_signal = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    global _shield_depth, _pending_signal
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1
        if not _shield_depth and _pending_signal is not None:
            signum, _pending_signal = _pending_signal, None
            raise KeyboardInterrupt(signal.Signals(signum).name)


# --- small helpers ------------------------------------------------------------------


def run_fsrep(*args: str, timeout: float = CLI_TIMEOUT, check: bool = True,
              prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run the fsrep CLI in its own session (a Ctrl-C on the terminal is
    ours to handle, not the CLI's). *prefix* runs it through another command,
    e.g. ``nsenter --net=...`` so that a daemon it starts lives in a network
    namespace."""
    done = subprocess.run([*prefix, *FSREP, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, start_new_session=True)
    if check and done.returncode != 0:
        raise BenchError(f"fsrep {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def _unescape(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return [_unescape(line.split()[4]) for line in f if len(line.split()) > 4]


def is_mounted(path: Path) -> bool:
    return str(path) in mount_points()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [arg.decode(errors="replace") for arg in f.read().split(b"\0") if arg]
    except OSError:
        return []


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of *pid* (threads included), 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT) -> str | None:
    """SIGTERM, then SIGKILL after *timeout*. Returns what had to be done,
    or None if the process was already gone."""
    if not alive(pid):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, timeout):
        return "SIGTERM"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_gone(pid, 10)
    return "SIGKILL"


def log_notes(path: Path) -> Counter[str]:
    """WARNING/ERROR/CRITICAL lines and tracebacks of a daemon log, without
    timestamps and pids, counted."""
    notes: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return notes
    for line in text.splitlines():
        parts = line.split(" ", 3)  # date, time, level, "name[pid]: message"
        if len(parts) == 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
            message = re.sub(r"\[\d+\]", "", parts[3])  # the pid
            message = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "GROUP", message)
            message = re.sub(r"(\d+\.\d+\.\d+\.\d+):\d{4,5}\b", r"\1:PORT", message)
            notes[f"{parts[2]} {message}"] += 1
        elif line.startswith("Traceback"):
            notes["Traceback (see the log)"] += 1
    return notes


@contextlib.contextmanager
def workdir(base: str | None, *, keep: bool = False) -> Iterator[Path]:
    """A fresh directory under *base* (default /var/tmp), removed at the end
    unless *keep* — and never while something is still mounted below it."""
    parent = Path(base or "/var/tmp").resolve()
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="fsrep-bench-", dir=parent))
    try:
        yield path
    finally:
        with shielded():
            busy = [m for m in mount_points() if m == str(path) or m.startswith(f"{path}/")]
            if busy:
                print(f"warning: still mounted, not removing {path}: {', '.join(busy)}", file=sys.stderr)
            elif keep:
                print(f"kept {path}", file=sys.stderr)
            else:
                shutil.rmtree(path, ignore_errors=True)


def ensure_key(key: Path) -> Path:
    if not key.exists():
        run_fsrep("keygen", str(key))
    return key


# --- the secondary ------------------------------------------------------------------


@dataclass
class Secondary:
    """A running ``fsrep serve``; ``stop()`` and ``start()`` take it down and
    bring it back on the same address, as an outage of the secondary host."""

    store: Path
    key: Path
    address: str
    prefix: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # more options of fsrep serve (e.g. --tls-cert ...)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log(self) -> Path:
        return self.store / ".fsrep" / "serve.log"

    def replica(self, group_id: str) -> Path:
        return self.store / group_id

    def start(self) -> None:
        """Start ``fsrep serve`` on ``address`` (port 0: any) and wait until it
        listens; ``address`` is then the one it listens on."""
        out_path = self.store.parent / f"{self.store.name}.stdout"
        err_path = self.store.parent / f"{self.store.name}.stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen([*self.prefix, *FSREP, "serve", str(self.store), "--listen", self.address,
                                          "--key-file", str(self.key), *self.extra],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            first = out_path.read_text(errors="replace").partition("\n")
            if first[1] and first[0].startswith("listening on "):
                self.address = first[0].removeprefix("listening on ").strip()
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited {self.proc.returncode}" if self.proc.returncode is not None \
                    else "did not start in time"
                raise BenchError(f"fsrep serve {why}: {err_path.read_text(errors='replace').strip()[-500:]} "
                                 f"(see {self.log})")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL; a no-op when it is not running."""
        with shielded():
            proc, self.proc = self.proc, None
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"warning: fsrep serve pid {proc.pid} ignored SIGTERM; killing it", file=sys.stderr)
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def secondary(store: Path, key: Path, listen: str = "127.0.0.1:0",
              prefix: Sequence[str] = (), extra: Sequence[str] = ()) -> Iterator[Secondary]:
    """``fsrep serve STORE --listen LISTEN EXTRA...`` (run through *prefix*,
    if any), stopped with SIGTERM at the end."""
    store.mkdir(parents=True, exist_ok=True)
    sec = Secondary(store, key, listen, tuple(prefix), tuple(extra))
    try:
        sec.start()
        yield sec
    finally:
        sec.stop()


# --- a primary ------------------------------------------------------------------------


@dataclass
class Primary:
    store: Path
    mountpoint: Path
    pid: int | None = None
    cleanup_notes: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.store / ".fsrep" / "fsrep.log"

    def status(self) -> dict[str, Any]:
        """The first (only) consistency group of ``fsrep status --json``."""
        done = run_fsrep("status", str(self.mountpoint), "--json", timeout=30)
        return json.loads(done.stdout)["groups"][0]


def daemon_pids(store: Path) -> set[int]:
    """Live primary daemons of *store*: processes running ``fsrep mount STORE
    ... --foreground`` (what ``fsrep mount`` starts), including one whose
    ``fsrep mount`` was interrupted before it reported ready."""
    ours = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        argv = cmdline(int(entry))
        if argv[1:4] == ["-m", "fsrep", "mount"] and str(store) in argv and "--foreground" in argv \
                and alive(int(entry)):
            ours.add(int(entry))
    return ours


def _unmount(primary: Primary) -> None:
    notes = primary.cleanup_notes
    pids = daemon_pids(primary.store)
    if is_mounted(primary.mountpoint):
        try:
            done = run_fsrep("umount", str(primary.mountpoint), check=False)
            if done.returncode != 0:
                notes.append(f"fsrep umount failed: {done.stderr.strip()}")
        except subprocess.TimeoutExpired:
            notes.append(f"fsrep umount did not finish in {CLI_TIMEOUT:g}s")
    for pid in pids:
        how = stop_pid(pid)
        if how:
            notes.append(f"primary daemon pid {pid} was still running; stopped with {how}")
    if is_mounted(primary.mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(primary.mountpoint)], capture_output=True, timeout=30)
        notes.append("lazy unmount (fusermount3 -u -z) was needed")
    for note in notes:
        print(f"warning: {primary.mountpoint}: {note}", file=sys.stderr)


@contextlib.contextmanager
def mounted(store: Path, mountpoint: Path, key: Path, secondary_address: str, *extra: str,
            prefix: Sequence[str] = ()) -> Iterator[Primary]:
    """``fsrep mount STORE MOUNTPOINT --secondary ADDRESS EXTRA...`` (run
    through *prefix*, if any); always unmounted and its daemon gone at the end."""
    store.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    primary = Primary(store.resolve(), mountpoint.resolve())
    try:
        run_fsrep("mount", str(primary.store), str(primary.mountpoint), "--secondary", secondary_address,
                  "--key-file", str(key), *extra, prefix=prefix)
        primary.pid = _daemon_pid(primary)
        yield primary
    finally:
        with shielded():
            _unmount(primary)


def _daemon_pid(primary: Primary) -> int:
    pids = daemon_pids(primary.store)
    if len(pids) != 1:
        raise BenchError(f"expected one daemon for {primary.store}, found {sorted(pids) or 'none'}")
    return pids.pop()


# --- comparing the stores -------------------------------------------------------------------


def compare_trees(primary: Path, replica: Path) -> list[str]:
    """Differences between a primary store and its replica (empty: identical)."""
    if not replica.is_dir():
        return [f"no replica directory {replica}"]
    return tree_differences(primary, replica)


def replica_problems(primary: Primary, sec: Secondary, group_id: str) -> list[str]:
    """What is wrong with the replica of a group next to its primary store,
    both daemons stopped: nothing, or one line with the first differences."""
    diff = compare_trees(primary.store, sec.replica(group_id))
    if not diff:
        return []
    return [f"replica differs from the primary store ({len(diff)} entries), e.g. {'; '.join(diff[:3])}"]


def daemon_notes(primary: Primary | None, sec: Secondary | None) -> dict[str, int]:
    """Warnings and errors in both daemons' logs, counted by message."""
    notes: dict[str, int] = {}
    if primary is not None:
        notes.update({f"primary: {k}": v for k, v in log_notes(primary.log).items()})
    if sec is not None:
        notes.update({f"secondary: {k}": v for k, v in log_notes(sec.log).items()})
    return notes
