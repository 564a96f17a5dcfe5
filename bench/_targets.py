"""The targets ``bench/run.py`` measures, each a context manager that sets it
up for one round and yields a ``Site``: the directory the workloads run in,
and, where a replica can be taken down and brought back, how to do that.

Everything a target starts is stopped when its context ends; a replicated
fsrep target then compares the replica with the primary store (both
daemons stopped), a GlusterFS one the two bricks' copies of the repaired
file.
"""

from __future__ import annotations

import contextlib
import filecmp
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    UNREACHABLE,
    BenchError,
    Primary,
    Secondary,
    daemon_notes,
    mounted,
    replica_problems,
    secondary,
)
from _peers import Gluster, Link

from fsrep._control import ControlError, request

TARGETS = {  # name: what it is
    "raw": "the raw backing directory (no FUSE): the limit",
    "fsrep-alone": "fsrep with no secondary (local passthrough)",
    "fsrep-loopback": "fsrep replicating over 127.0.0.1",
    "fsrep-1ms": "fsrep replicating over a link with 1 ms round-trip time (two network namespaces)",
    "glusterfs": "GlusterFS replica 2, both bricks here, its FUSE client",
    "rsync": "rsync -I --inplace --no-whole-file between two plain directories (repair only)",
}
POLL = 0.02
REPAIR_TIMEOUT = 900.0
STATE_TIMEOUT = 60.0


@dataclass
class Site:
    """Where one target's workloads of one round run, and what was seen."""

    root: Path
    peer_down: Callable[[], None] | None = None  # the replica's host "crashes"
    peer_back: Callable[[], dict[str, float]] | None = None  # it is back: until both copies are equal
    replica_equal: bool | None = None  # set at the end for replicated targets
    problems: list[str] = field(default_factory=list)
    log_notes: dict[str, int] = field(default_factory=dict)
    states: list[str] = field(default_factory=list)

    def check_in_sync(self, primary: Primary, when: str) -> None:
        state = primary.status()
        self.states.append(state["state"])
        if state["state"] != "InSync":
            self.problems.append(f"the group is {state['state']} {when} "
                                 f"({state.get('stale_reason') or state.get('last_error')}): not replicated figures")


# --- fsrep ---------------------------------------------------------------------------------


def _control(primary: Primary, message: dict[str, Any]) -> dict[str, Any]:
    """One request to the daemon's control socket; its refusal or silence
    is a BenchError."""
    try:
        reply = request(primary.store / ".fsrep", message)
    except ControlError as exc:
        raise BenchError(f"{primary.mountpoint}: {message['cmd']}: {exc}") from None
    if "error" in reply:
        raise BenchError(f"{primary.mountpoint}: the daemon refused {message['cmd']}: {reply['error']}")
    return reply


def _group(primary: Primary) -> dict[str, Any]:
    """The group's status, as ``fsrep status --json`` prints it, read from
    the control socket directly (a CLI run takes longer than the poll step)."""
    return _control(primary, {"cmd": "status"})["groups"][0]


def wait_state(primary: Primary, state: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (group := _group(primary))["state"] != state:
        if time.monotonic() > deadline:
            raise BenchError(f"{primary.mountpoint}: not {state} after {timeout:g}s but {group['state']} "
                             f"({group.get('stale_reason') or group.get('last_error')}); see {primary.log}")
        time.sleep(POLL)
    return group


def fsrep_back(primary: Primary, sec: Secondary) -> dict[str, float]:
    """Start the secondary again and ask for a quick resync at once (what
    ``fsrep-resync`` does); seconds from the secondary listening until the
    group is InSync, the resync's own seconds as the daemon reports them,
    and what it sent."""
    group = wait_state(primary, "OutOfSync", STATE_TIMEOUT)
    sent_before = group["resync_bytes_sent"]
    sec.start()  # returns once it listens: the secondary is back
    start = time.perf_counter()
    _control(primary, {"cmd": "resync", "group": group["id"], "mode": "quick",
                       "rate_limit": 0})  # 0: no limit, fsrep-resync's default
    after = wait_state(primary, "InSync", REPAIR_TIMEOUT)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "resync_s": after["last_resync_seconds"],
            "MB_sent": (after["resync_bytes_sent"] - sent_before) / 1e6}


@contextlib.contextmanager
def fsrep_alone(base: Path, key: Path) -> Iterator[Site]:
    """fsrep mounted with an unreachable secondary: its local passthrough."""
    site = Site(base / "mnt")
    primary = None
    try:
        with mounted(base / "primary", base / "mnt", key, UNREACHABLE) as primary:
            yield site
    finally:
        site.log_notes.update(daemon_notes(primary, None))
        if primary is not None:
            site.problems += primary.cleanup_notes


@contextlib.contextmanager
def fsrep_replicated(base: Path, key: Path, link: Link | None = None) -> Iterator[Site]:
    """fsrep replicating to a secondary on 127.0.0.1, or, with *link*, from
    namespace A to a secondary in namespace B. At the end (both daemons
    stopped) the replica is compared with the primary store."""
    listen = f"{link.addr_b}:0" if link else "127.0.0.1:0"
    site = Site(base / "mnt")
    primary: Primary | None = None
    sec: Secondary | None = None
    group_id = None
    try:
        with secondary(base / "secondary", key, listen, link.enter_b if link else ()) as sec, \
                mounted(base / "primary", base / "mnt", key, sec.address, prefix=link.enter_a if link else ()) \
                as primary:
            group = primary.status()
            group_id = group["id"]
            if group["state"] != "InSync":
                raise BenchError(f"{base.name}: the group is {group['state']} after mounting, not InSync "
                                 f"({group.get('last_error') or group.get('stale_reason')}); see {primary.log}")
            site.peer_down = sec.stop
            site.peer_back = lambda: fsrep_back(primary, sec)
            yield site
            site.check_in_sync(primary, "after the workloads")
        differences = replica_problems(primary, sec, group_id)
        site.replica_equal = not differences
        site.problems += differences
    finally:
        site.log_notes.update(daemon_notes(primary, sec))
        if primary is not None:
            site.problems += primary.cleanup_notes


# --- the others ------------------------------------------------------------------------------


@contextlib.contextmanager
def raw(base: Path) -> Iterator[Site]:
    (base / "raw").mkdir(parents=True)
    yield Site(base / "raw")


@contextlib.contextmanager
def gluster_round(g: Gluster, round_no: int) -> Iterator[Site]:
    """A fresh directory of the volume for this round; at the end the two
    bricks' copies of the repaired file are compared, and the directory is
    removed."""
    name = f"round{round_no}"
    site = Site(g.mountpoint / name)
    site.root.mkdir()
    site.peer_down = lambda: g.kill_brick(1)
    site.peer_back = lambda: {"seconds": g.restart_and_heal(1)}
    try:
        yield site
        copies = [b / name / "repair.img" for b in g.bricks]
        if all(c.exists() for c in copies):
            site.replica_equal = filecmp.cmp(*copies, shallow=False)
            if not site.replica_equal:
                site.problems.append("the bricks' copies of repair.img differ after the heal")
    finally:
        shutil.rmtree(site.root, ignore_errors=True)


def rsync_repair(root: Path, make: Callable[[Path], None], change: Callable[[Path], None]) -> dict[str, float]:
    """The same repair with rsync: a copy of the file in a second plain
    directory, the change made to the original, then rsync of the change
    in place; seconds of the rsync and what it sent."""
    src, dst = root / "src", root / "dst"
    src.mkdir()
    dst.mkdir()
    make(src / "repair.img")
    shutil.copyfile(src / "repair.img", dst / "repair.img")
    change(src / "repair.img")
    start = time.perf_counter()
    done = subprocess.run(["rsync", "-I", "--inplace", "--no-whole-file", "--stats", str(src / "repair.img"),
                           str(dst / "repair.img")], capture_output=True, text=True, timeout=REPAIR_TIMEOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"rsync: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    sent = next((line for line in done.stdout.splitlines() if line.startswith("Total bytes sent:")), "")
    figures = {"seconds": seconds}
    if sent:
        figures["MB_sent"] = int(sent.split(":")[1].strip().replace(",", "")) / 1e6
    if not filecmp.cmp(src / "repair.img", dst / "repair.img", shallow=False):
        raise BenchError("rsync: the copies differ after rsync")
    return figures
