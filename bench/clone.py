#!/usr/bin/env python3
"""Clone benchmark: ``fsrep clone`` of a ``--size-mib`` file and of a tree
of ``--files`` small files of the same total size, on a mount InSync with
its secondary over loopback; the time of each clone and the bytes it put
on the link, next to ``cp`` of the same data in the store (the baseline:
what a copy without clones costs locally, before any byte is sent).

Bytes on the link are counted by a byte-counting TCP relay between the
primary and its secondary (every frame, headers and acks' requests
included, not only file data); the group's ``bytes_sent`` (file data put
on the link) is printed next to it. The aim of the issue: at most 1 MiB on
the link for each clone. The trees are compared by digest at the end; a
difference fails the run.

The source data is written through the mount before the clock starts and
the relay's count is read only once the group is InSync again. The store's
file system decides whether a clone is a reflink (XFS, btrfs: instant) or a
copy of the data on each side (ext4, tmpfs: disk-bound); the report says
which.

    .venv/bin/python bench/clone.py                 # 1 GiB: a minute or two
    .venv/bin/python bench/clone.py --quick         # 32 MiB: a check that it works
    .venv/bin/python bench/clone.py --json --dir /srv/scratch
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _workloads as wl  # noqa: E402
from _common import (  # noqa: E402
    BenchError,
    Primary,
    compare_trees,
    daemon_notes,
    ensure_key,
    install_signal_handlers,
    mounted,
    run_fsrep,
    secondary,
    workdir,
)
from _targets import POLL, STATE_TIMEOUT  # noqa: E402
from snapshot import MEMORY_CAP, NO_SCHEDULE  # noqa: E402

AIM_LINK_BYTES = 1 * wl.MiB
RELAY_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Params:
    size_mib: int = 1024
    files: int = 4096

    @classmethod
    def quick(cls) -> Params:
        return cls(size_mib=32, files=128)


class Relay:
    """A TCP relay on 127.0.0.1 that counts the bytes it carries from the
    primary to the secondary (threads: the bench's only server)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.to_secondary = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(RELAY_CHUNK):
                if counted:
                    with self._lock:
                        self.to_secondary += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def group_status(primary: Primary, path: str = "/") -> dict[str, Any]:
    """The status of *primary*'s group at *path* (the default group's by default)."""
    done = run_fsrep("status", str(primary.mountpoint), "--json", timeout=30)
    return next(g for g in json.loads(done.stdout)["groups"] if g["path"] == path)


def in_sync(primary: Primary, path: str = "/") -> dict[str, Any]:
    """Wait until the group at *path* is InSync with nothing in flight; its status."""
    deadline = time.monotonic() + STATE_TIMEOUT
    while (group := group_status(primary, path))["state"] != "InSync" or group["ops_in_flight"]:
        if time.monotonic() > deadline:
            raise BenchError(f"{primary.mountpoint}: not InSync after {STATE_TIMEOUT:g}s ({group['state']}); "
                             f"see {primary.log}")
        time.sleep(POLL)
    return group


def _clone(primary: Primary, relay: Relay, src: Path, dst: Path) -> dict[str, Any]:
    """One ``fsrep clone``: its wall time, the bytes on the link and the
    group's data bytes sent meanwhile."""
    before = in_sync(primary)
    relayed = relay.to_secondary
    started = time.monotonic()
    done = run_fsrep("clone", str(src), str(dst), timeout=3600)
    seconds = time.monotonic() - started
    after = in_sync(primary)
    link = relay.to_secondary - relayed
    return {"seconds": round(seconds, 3), "link_bytes": link,
            "data_bytes_sent": after["bytes_sent"] - before["bytes_sent"],
            "bytes_cloned": after["bytes_cloned"] - before["bytes_cloned"], "said": done.stdout.strip(),
            "aim_met": link <= AIM_LINK_BYTES}


def cp_seconds(src: Path, dst: Path) -> float:
    """``cp -a`` of *src* inside the store (no reflink asked): the baseline."""
    started = time.monotonic()
    subprocess.run(["cp", "-a", "--reflink=never", str(src), str(dst)], check=True)
    os.sync()
    seconds = time.monotonic() - started
    if dst.is_dir():
        shutil.rmtree(dst)
    else:
        dst.unlink()
    return round(seconds, 3)


def _reflinks(path: Path) -> bool:
    """Whether the file system of *path* clones by reflink (FICLONE)."""
    probe, copy = path / ".reflink-probe", path / ".reflink-copy"
    probe.write_bytes(b"x")
    try:
        done = subprocess.run(["cp", "--reflink=always", str(probe), str(copy)], capture_output=True)
        return done.returncode == 0
    finally:
        probe.unlink(missing_ok=True)
        copy.unlink(missing_ok=True)


def measure(base: Path, key: Path, p: Params) -> dict[str, Any]:
    """Both clones in *base* (a fresh directory), as one JSON-ready dict."""
    store, mnt, sec_store = base / "store", base / "mnt", base / "secondary"
    r: dict[str, Any] = {"parameters": asdict(p), "loadavg": os.getloadavg()[0], "problems": []}
    store.mkdir()
    r["reflinks"] = _reflinks(store)
    with secondary(sec_store, key, prefix=MEMORY_CAP) as sec:
        relay = Relay(sec.address)
        try:
            with mounted(store, mnt, key, relay.address, *NO_SCHEDULE, prefix=MEMORY_CAP) as primary:
                in_sync(primary)
                wl.fill(mnt / "base.img", p.size_mib)
                tree = mnt / "tree"
                tree.mkdir()
                each = p.size_mib * wl.MiB // p.files
                chunk = os.urandom(each)
                for i in range(p.files):
                    (tree / f"f{i:05d}").write_bytes(chunk[i % 251:] + chunk[:i % 251])
                os.sync()
                group = in_sync(primary)
                r["file"] = _clone(primary, relay, mnt / "base.img", mnt / "copy.img")
                r["tree"] = _clone(primary, relay, tree, mnt / "tree-copy")
                r["file"]["cp_seconds"] = cp_seconds(store / "base.img", store / "cp-copy.img")
                r["tree"]["cp_seconds"] = cp_seconds(store / "tree", store / "cp-tree")
                r["notes"] = daemon_notes(primary, sec)
                gid = group["id"]
        finally:
            relay.close()
    diff = compare_trees(store, sec.replica(gid))
    if diff:
        r["problems"].append(f"replica differs ({len(diff)} entries), e.g. {'; '.join(diff[:3])}")
    return r


def report(r: dict[str, Any]) -> list[str]:
    kind = "reflinks (FICLONE)" if r["reflinks"] else "copies of the data on each side (no reflinks)"
    lines = [f"clone benchmark: {r['parameters']['size_mib']} MiB file, {r['parameters']['files']} files of the same "
             f"total; the store's file system makes {kind}"]
    for name in ("file", "tree"):
        m = r[name]
        ratio = m["seconds"] / m["cp_seconds"] if m["cp_seconds"] else float("nan")
        lines.append(f"  {name}: {m['seconds']:.2f}s ({ratio:.2f}x cp's {m['cp_seconds']:.2f}s), "
                     f"{m['link_bytes']} bytes on the link ({m['data_bytes_sent']} of file data), "
                     f"{m['bytes_cloned']} bytes cloned — aim <= {AIM_LINK_BYTES} bytes: "
                     f"{'met' if m['aim_met'] else 'MISSED'}")
    lines.extend(f"  problem: {problem}" for problem in r["problems"])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB: a check that it works")
    parser.add_argument("--size-mib", type=int)
    parser.add_argument("--files", type=int)
    parser.add_argument("--dir", help="where to work (default: a temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    p = Params.quick() if args.quick else Params()
    p = Params(size_mib=args.size_mib or p.size_mib, files=args.files or p.files)
    install_signal_handlers()
    try:
        with workdir(args.dir) as base:
            r = measure(base, ensure_key(base / "key"), p)
    except BenchError as exc:
        print(f"clone.py: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(r, indent=2) if args.json else "\n".join(report(r)))
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
