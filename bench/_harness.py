"""Shared set-up for the benchmarks: a secondary on 127.0.0.1, a primary
mounted through the real CLI, and cleanup of everything started, also on
errors and Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FSREP = [sys.executable, "-m", "fsrep"]
UNREACHABLE = "127.0.0.1:1"


def fsrep(*args: str) -> str:
    done = subprocess.run([*FSREP, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"fsrep {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Setup:
    """Where a benchmark writes, and what serves it."""

    name: str
    target: Path
    primary: Path
    replica_parent: Path | None


@contextlib.contextmanager
def workdir(base: str | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fsrep-bench-", dir=base or "/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def secondary(base: Path) -> Iterator[str]:
    store = base / "secondary"
    store.mkdir()
    key = base / "key"
    if not key.exists():
        fsrep("keygen", str(key))
    proc = subprocess.Popen([*FSREP, "serve", str(store), "--listen", "127.0.0.1:0", "--key-file", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise SystemExit(f"fsrep serve did not start; see {store}/.fsrep/serve.log")
        yield line.removeprefix("listening on ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def mounted(base: Path, address: str, *extra: str) -> Iterator[Path]:
    store, mnt, key = base / "primary", base / "mnt", base / "key"
    store.mkdir()
    mnt.mkdir()
    if not key.exists():
        fsrep("keygen", str(key))
    fsrep("mount", str(store), str(mnt), "--secondary", address, "--key-file", str(key), *extra)
    try:
        yield mnt
    finally:
        done = subprocess.run([*FSREP, "umount", str(mnt)], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def state(mnt: Path) -> str:
    return json.loads(fsrep("status", str(mnt), "--json"))["groups"][0]["state"]


@contextlib.contextmanager
def configuration(kind: str, base: Path) -> Iterator[Path]:
    """A directory to benchmark: ``raw`` (the store itself), ``local``
    (fsrep with no reachable secondary), ``replicated`` and
    ``replicated-wb`` (kernel writeback cache)."""
    path = base / kind
    path.mkdir(parents=True)
    if kind == "raw":
        yield path
        return
    if kind == "local":
        with mounted(path, UNREACHABLE) as mnt:
            yield mnt
        return
    extra = ("--writeback-cache",) if kind.endswith("-wb") else ()
    with secondary(path) as address, mounted(path, address, *extra) as mnt:
        if state(mnt) != "InSync":
            raise SystemExit(f"{kind}: the group is not InSync")
        yield mnt
