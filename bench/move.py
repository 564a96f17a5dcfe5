#!/usr/bin/env python3
"""Move benchmark: ``fsrep-move`` of a ``--size-mib`` group (in files of
256 MiB) to another directory while a writer appends to a file of the
group at a steady ``--rate-mib`` MiB/s, fsync after each 64 KiB; on a
mount InSync with its secondary over loopback.

Printed, as the issue asks: the bytes put on the link while the move ran
(from a second before it to a second after it, counted by a byte-counting
relay: every frame, not only data) against the writer's bytes in the same
window (aim: at most 1% more), the writer's longest write+fsync in that
window (aim: under 1 s), and the move's time against ``cp -a`` of the
same data to the same file system (the baseline). The moved data is
compared with the replica by digest at the end; a difference fails the run.

A move within one file system is one rename. With ``--across`` the
destination is another file system (an ext4 image, loop-mounted here): the
data is copied while the writer runs, and the baseline is ``cp -a`` to that
file system.

With ``--to-primary`` the group moves to a second running primary (its
own store on the same disk, the same key and secondary, ``--accept-moves``
on a port of 127.0.0.1): the mover copies the data to it directly (not on
the link; ``copied_bytes``), and the new primary relates to the secondary
from a snapshot both already hold, so both primaries' bytes to the
secondary (both through the relay) are the writer's and little more. The
old mount's copy is read-only then: the writer, on EROFS, goes on with the
same file on the new mount, and its longest write+fsync includes that
switch (from the write that failed to the first one done there). The
baseline is ``cp -a`` to the same file system (one disk holds both
stores); the new primary's store is compared with the replica.

    .venv/bin/python bench/move.py                 # 2 GiB: a minute or two
    .venv/bin/python bench/move.py --across        # 2 GiB to another file system
    .venv/bin/python bench/move.py --to-primary    # 2 GiB to another running primary: a few minutes
    .venv/bin/python bench/move.py --quick         # 64 MiB: a check that it works
    .venv/bin/python bench/move.py --json --dir /srv/scratch
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as wl  # noqa: E402
from _common import (  # noqa: E402
    BenchError,
    compare_trees,
    daemon_notes,
    ensure_key,
    install_signal_handlers,
    log_notes,
    mounted,
    secondary,
    workdir,
)
from clone import Relay, cp_seconds, in_sync  # noqa: E402
from snapshot import MEMORY_CAP, NO_SCHEDULE  # noqa: E402

GROUP = "vms/vm1"
FILE_MIB = 256
WRITE = 64 * 1024
WINDOW = 1.0  # seconds of writing counted before and after the move
AIM_PAUSE = 1.0
AIM_EXTRA = 0.01
MAX_WRITES = 1_000_000  # the writer's bound
SWITCH_TIMEOUT = 30.0  # seconds the writer may look for its file on the new mount


@dataclass(frozen=True)
class Params:
    size_mib: int = 2048
    rate_mib: int = 8
    across: bool = False
    to_primary: bool = False

    @classmethod
    def quick(cls) -> Params:
        return cls(size_mib=64, rate_mib=4)


class Writer(threading.Thread):
    """Appends WRITE bytes, fsync, at *rate* bytes/s; counts its bytes and
    the longest write+fsync since ``window()``. Given *then*, a write that
    fails with EROFS (the group moved to another primary) is made again at
    the end of *then*, the same file there, and the writer goes on with it;
    ``switch_seconds``: from that EROFS to the write done there."""

    def __init__(self, path: Path, rate: int, then: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.path, self.interval, self.then = path, WRITE / rate, then
        self.written = 0
        self.longest = 0.0
        self.switch_seconds: float | None = None
        self.error: BaseException | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        chunk = os.urandom(WRITE)
        try:
            with contextlib.ExitStack() as files:
                f = files.enter_context(open(self.path, "ab", buffering=0))
                next_at = time.monotonic()
                for _ in range(MAX_WRITES):
                    if self.halt.wait(max(0.0, next_at - time.monotonic())):
                        return
                    started = time.monotonic()
                    try:
                        f.write(chunk)
                        os.fsync(f.fileno())
                    except OSError as exc:
                        if exc.errno != errno.EROFS or self.then is None or self.switch_seconds is not None:
                            raise
                        refused = time.monotonic()
                        f = files.enter_context(self._reopen())
                        f.write(chunk)
                        os.fsync(f.fileno())
                        self.switch_seconds = time.monotonic() - refused
                    self.longest = max(self.longest, time.monotonic() - started)
                    self.written += WRITE
                    next_at += self.interval
        except BaseException as exc:
            self.error = exc

    def _reopen(self) -> Any:
        """*then*, opened to append, once the new mount serves it."""
        assert self.then is not None
        deadline = time.monotonic() + SWITCH_TIMEOUT
        while True:
            try:
                return open(self.then, "ab", buffering=0)
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def window(self) -> tuple[int, float]:
        """Start a measuring window: the bytes written so far."""
        self.longest = 0.0
        return self.written, time.monotonic()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        if self.error is not None:
            raise BenchError(f"the writer failed: {self.error!r}")


@contextlib.contextmanager
def other_disk(base: Path, size_mib: int) -> Iterator[Path]:
    """An ext4 file system of *size_mib* MiB in an image, loop-mounted."""
    image, mountpoint = base / "disk2.img", base / "disk2"
    with open(image, "wb") as f:
        f.truncate(size_mib * wl.MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)
        image.unlink()


def measure(base: Path, key: Path, p: Params) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        if p.across:  # room for the copy, cp's copy (one at a time) and the writer's bytes
            disk = stack.enter_context(other_disk(base, p.size_mib * 2 + 512))
        else:
            disk = base / "disk2"
            disk.mkdir()
        return _measure(base, disk, key, p)


def free_address() -> str:
    """127.0.0.1 and a port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _measure(base: Path, disk: Path, key: Path, p: Params) -> dict[str, Any]:
    store, mnt, sec_store = base / "store", base / "mnt", base / "secondary"
    store2, mnt2, accept = base / "store2", base / "mnt2", free_address()
    target = accept if p.to_primary else str(disk / "vm1")
    r: dict[str, Any] = {"parameters": asdict(p), "loadavg": os.getloadavg()[0], "problems": []}
    with secondary(sec_store, key, prefix=MEMORY_CAP) as sec:
        relay = Relay(sec.address)
        try:
            with contextlib.ExitStack() as stack:
                primary = stack.enter_context(mounted(store, mnt, key, relay.address, "--group", GROUP,
                                                      *NO_SCHEDULE, prefix=MEMORY_CAP))
                other = stack.enter_context(mounted(store2, mnt2, key, relay.address, "--accept-moves", accept,
                                                    *NO_SCHEDULE, prefix=MEMORY_CAP)) if p.to_primary else None
                if other is not None:
                    (mnt2 / GROUP).parent.mkdir()
                data = mnt / GROUP
                for i in range(max(1, p.size_mib // FILE_MIB)):
                    wl.fill(data / f"disk{i}.img", min(FILE_MIB, p.size_mib))
                gid = in_sync(primary, "/" + GROUP)["id"]
                r["cp_seconds"] = cp_seconds(store / GROUP, disk / "cp-copy")
                writer = Writer(data / "journal", p.rate_mib * wl.MiB, mnt2 / GROUP / "journal" if other else None)
                writer.start()
                try:
                    time.sleep(WINDOW)  # the writer at its pace
                    written, since = writer.window()
                    relayed = relay.to_secondary
                    time.sleep(WINDOW)
                    started = time.monotonic()
                    done = subprocess.run([sys.executable, "-m", "tools.move", str(mnt), "--group", "/" + GROUP,
                                           "--to-primary" if other else "--to", target, "--json"],
                                          capture_output=True, text=True, timeout=3600)
                    r["move_seconds"] = round(time.monotonic() - started, 3)
                    time.sleep(WINDOW)
                    in_sync(other if other and done.returncode == 0 else primary, "/" + GROUP)
                    r["writer_bytes"] = writer.written - written
                    r["link_bytes"] = relay.to_secondary - relayed
                    r["longest_write_seconds"] = round(writer.longest, 4)
                    r["window_seconds"] = round(time.monotonic() - since, 3)
                finally:
                    writer.stop()
                if done.returncode != 0:
                    r["problems"].append(f"fsrep-move failed: {done.stderr.strip()}")
                else:
                    r["moved"] = json.loads(done.stdout)
                if other is not None:
                    r["switch_seconds"] = None if writer.switch_seconds is None else round(writer.switch_seconds, 4)
                    if "moved" in r and writer.switch_seconds is None:
                        r["problems"].append("the old mount never refused the writer (EROFS) after the move")
                r["notes"] = daemon_notes(primary, sec)
                if other is not None:
                    r["notes"].update({f"new primary: {k}": v for k, v in log_notes(other.log).items()})
        finally:
            relay.close()
    moved = (store2 / GROUP if other else Path(target)) if "moved" in r else store / GROUP
    diff = compare_trees(moved, sec.replica(gid))
    if diff:
        r["problems"].append(f"replica differs ({len(diff)} entries), e.g. {'; '.join(diff[:3])}")
    r["aims"] = {"link_bytes": r["link_bytes"] <= r["writer_bytes"] * (1 + AIM_EXTRA),
                 "pause": r["longest_write_seconds"] < AIM_PAUSE}
    return r


def report(r: dict[str, Any]) -> list[str]:
    p, aims = r["parameters"], r["aims"]
    ratio = r["move_seconds"] / r["cp_seconds"] if r["cp_seconds"] else float("nan")
    where = "to another primary (copied)" if p["to_primary"] else \
        "to another file system (copied)" if p["across"] else "within its file system (renamed)"
    moved = r.get("moved", {})
    lines = [f"move benchmark: a {p['size_mib']} MiB group moved {where} while a writer appends {p['rate_mib']} "
             f"MiB/s (64 KiB writes, fsync after each); load {r['loadavg']:.2f}",
             f"  on the link in a {r['window_seconds']:.1f}s window around the move: {r['link_bytes']} bytes for "
             f"{r['writer_bytes']} bytes written — aim <= +{AIM_EXTRA:.0%}: "
             f"{'met' if aims['link_bytes'] else 'MISSED'}",
             f"  longest write+fsync in the window: {r['longest_write_seconds']:.3f}s — aim < {AIM_PAUSE:g}s: "
             f"{'met' if aims['pause'] else 'MISSED'}",
             f"  fsrep-move took {r['move_seconds']:.3f}s (the command, daemon's part "
             f"{moved.get('seconds', float('nan')):.4f}s), {ratio:.4f}x cp -a of the data to the same place "
             f"({r['cp_seconds']:.2f}s)"]
    if p["across"] or p["to_primary"]:
        lines.append(f"  copied {moved.get('copied_bytes', 0)} bytes{' (not on the link)' if p['to_primary'] else ''}; "
                     f"clients' changes waited {moved.get('pause_seconds', float('nan')):.3f}s at the cutover")
    if p["to_primary"]:
        switch = r.get("switch_seconds")
        lines.append("  the old mount never refused the writer (EROFS)" if switch is None else
                     f"  the writer, refused (EROFS) on the old mount, wrote on the new one {switch:.3f}s later")
    lines.extend(f"  problem: {problem}" for problem in r["problems"])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB: a check that it works")
    parser.add_argument("--size-mib", type=int)
    parser.add_argument("--rate-mib", type=int)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--across", action="store_true", help="to another file system (a loop-mounted ext4 image)")
    where.add_argument("--to-primary", action="store_true",
                       help="to a second running primary (its own store, the same secondary)")
    parser.add_argument("--dir", help="where to work (default: a temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    p = Params.quick() if args.quick else Params()
    p = Params(size_mib=args.size_mib or p.size_mib, rate_mib=args.rate_mib or p.rate_mib, across=args.across,
               to_primary=args.to_primary)
    install_signal_handlers()
    try:
        with workdir(args.dir) as base:
            r = measure(base, ensure_key(base / "key"), p)
    except BenchError as exc:
        print(f"move.py: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=2) if args.json else "\n".join(report(r)))
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
