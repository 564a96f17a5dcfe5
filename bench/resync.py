#!/usr/bin/env python3
"""Resync benchmark: a large file replicated, the link cut (the secondary
stops cleanly), 1% of its 4 KiB regions rewritten at random, the link
restored. Prints the quick resync's bytes and time next to rsync
(--inplace --no-whole-file -I) of the same change between two plain
directories and a full copy; then a baseline of the same data against a
plain cp.

Then a tree of many directories (``--dirs``, default 5 000 and 50 000), each
holding one small file, written straight into the primary's store: its
baseline against an empty secondary and a checksum resync of it, as time per
directory. A resync whose directory phase grows with the square of the tree
shows as a per-directory time that grows with the tree; the aim is the
ratio of the largest tree's per-directory time to the smallest's <= 1.5.

    .venv/bin/python bench/resync.py [--size-mib 2048] [--percent 1] [--dirs 5000,50000] [--only file|tree]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FSREP, run_fsrep, workdir  # noqa: E402

MiB = 1024 * 1024


def fsrep(*args: str) -> str:
    return run_fsrep(*args).stdout
REGION = 4096


def write_random(path: Path, size_mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())


def rewrite_regions(path: Path, regions: list[int], data: dict[int, bytes]) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for r in regions:
            os.pwrite(fd, data[r], r * REGION)
        os.fsync(fd)
    finally:
        os.close(fd)


class Secondary:
    def __init__(self, store: Path, key: Path) -> None:
        self.store, self.key, self.port, self.proc = store, key, 0, None

    def start(self) -> None:
        self.proc = subprocess.Popen([*FSREP, "serve", str(self.store), "--listen", f"127.0.0.1:{self.port}",
                                      "--key-file", str(self.key)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on"):
            raise SystemExit(f"fsrep serve did not start; see {self.store}/.fsrep/serve.log")
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
        self.proc = None


def status(mnt: Path) -> dict:
    return json.loads(fsrep("status", str(mnt), "--json"))["groups"][0]


def wait_state(mnt: Path, state: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while (s := status(mnt))["state"] != state:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {state}")
        time.sleep(0.05)
    return s


def rsync_change(base: Path, size_mib: int, regions: list[int], data: dict[int, bytes]) -> tuple[int, float]:
    src, dst = base / "rsync-src", base / "rsync-dst"
    src.mkdir()
    dst.mkdir()
    write_random(src / "disk.img", size_mib)
    shutil.copyfile(src / "disk.img", dst / "disk.img")
    rewrite_regions(src / "disk.img", regions, data)
    os.sync()
    start = time.perf_counter()
    done = subprocess.run(["rsync", "-I", "--inplace", "--no-whole-file", "--stats", str(src / "disk.img"),
                           str(dst / "disk.img")], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", done.stdout).group(1).replace(",", ""))
    return sent, elapsed


def make_tree(root: Path, count: int, fanout: int = 100) -> None:
    """*count* directories, *fanout* to a parent (a few levels deep), each
    with one small file."""
    made = [root]
    for i in range(count):
        d = made[i // fanout] / f"d{i:06d}"
        d.mkdir()
        (d / "f").write_bytes(b"%d\n" % i * 10)
        made.append(d)


def resync_seconds(mnt: Path, *extra: str) -> float:
    """Run fsrep-resync; the daemon's own time for the run."""
    subprocess.run([sys.executable, "-m", "tools.resync", str(mnt), *extra, "--json"], check=True,
                   capture_output=True, text=True, timeout=7200)
    return status(mnt)["last_resync_seconds"]


def tree_bench(base: Path, key: Path, count: int) -> tuple[float, float]:
    """(baseline seconds, checksum resync seconds) of a tree of *count*
    directories."""
    root = base / f"tree-{count}"
    store, mnt, sec_store = root / "primary", root / "mnt", root / "secondary"
    for d in (store, mnt, sec_store):
        d.mkdir(parents=True)
    make_tree(store, count)
    os.sync()
    secondary = Secondary(sec_store, key)
    secondary.start()
    try:
        fsrep("mount", str(store), str(mnt), "--secondary", f"127.0.0.1:{secondary.port}", "--key-file", str(key))
        try:
            baseline = wait_state(mnt, "InSync")["last_resync_seconds"]
            checksum = resync_seconds(mnt, "--mode", "checksum")
        finally:
            fsrep("umount", str(mnt))
    finally:
        secondary.stop()
    shutil.rmtree(root)
    return baseline, checksum


def trees(base: Path, counts: list[int]) -> None:
    key = base / "tree-key"
    fsrep("keygen", str(key))
    per_dir: dict[str, list[float]] = {"baseline": [], "checksum": []}
    print(f"\n{'directories':>12}{'baseline s':>12}{'per dir ms':>12}{'checksum s':>12}{'per dir ms':>12}")
    for count in counts:
        baseline, checksum = tree_bench(base, key, count)
        per_dir["baseline"].append(baseline / count)
        per_dir["checksum"].append(checksum / count)
        print(f"{count:>12}{baseline:>12.2f}{baseline / count * 1000:>12.3f}{checksum:>12.2f}"
              f"{checksum / count * 1000:>12.3f}", flush=True)
    for what, times in per_dir.items():
        print(f"{what}: per-directory time at {counts[-1]} / at {counts[0]}: {times[-1] / times[0]:.2f} "
              f"(aim <= 1.5)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir")
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--percent", type=float, default=1.0)
    parser.add_argument("--dirs", default="5000,50000", help="tree sizes, comma-separated")
    parser.add_argument("--only", choices=("file", "tree"))
    args = parser.parse_args()
    counts = [int(n) for n in args.dirs.split(",")]
    if args.only == "tree":
        with workdir(args.dir) as base:
            trees(base, counts)
        return 0
    if shutil.which("rsync") is None:
        raise SystemExit("rsync is needed for the comparison: apt-get install rsync")
    nregions = args.size_mib * MiB // REGION
    rng = random.Random(1)
    regions = sorted(rng.sample(range(nregions), int(nregions * args.percent / 100)))
    data = {r: os.urandom(REGION) for r in regions}
    dirty = len(regions) * REGION
    with workdir(args.dir) as base:
        key = base / "key"
        fsrep("keygen", str(key))
        store, mnt, sec_store = base / "primary", base / "mnt", base / "secondary"
        for d in (store, mnt, sec_store):
            d.mkdir()
        secondary = Secondary(sec_store, key)
        secondary.start()
        try:
            fsrep("mount", str(store), str(mnt), "--secondary", f"127.0.0.1:{secondary.port}", "--key-file",
                  str(key))
            try:
                write_random(mnt / "disk.img", args.size_mib)
                secondary.stop()
                rewrite_regions(mnt / "disk.img", regions, data)
                wait_state(mnt, "OutOfSync")
                before = status(mnt)["resync_bytes_sent"]
                secondary.start()
                after = wait_state(mnt, "InSync")
                quick_time = after["last_resync_seconds"]  # the resync itself, not the reconnect backoff
                quick_bytes = after["resync_bytes_sent"] - before
            finally:
                fsrep("umount", str(mnt))
            # Baseline: the same store, a new empty secondary.
            secondary.stop()
            shutil.rmtree(sec_store)
            sec_store.mkdir()
            shutil.rmtree(store / ".fsrep" / "groups")
            secondary.start()
            os.sync()
            fsrep("mount", str(store), str(mnt), "--secondary", f"127.0.0.1:{secondary.port}", "--key-file",
                  str(key))
            baseline_time = wait_state(mnt, "InSync")["last_resync_seconds"]
            fsrep("umount", str(mnt))
        finally:
            secondary.stop()
        os.sync()
        start = time.perf_counter()
        shutil.copyfile(store / "disk.img", base / "cp-copy.img")
        with open(base / "cp-copy.img", "rb+") as f:
            os.fsync(f.fileno())
        cp_time = time.perf_counter() - start
        rsync_bytes, rsync_time = rsync_change(base, args.size_mib, regions, data)
    size = args.size_mib * MiB
    print(f"\n{args.size_mib} MiB file, {len(regions)} random 4 KiB regions rewritten ({dirty} dirty bytes)\n")
    print(f"{'':<28}{'bytes sent':>14}{'seconds':>10}")
    print(f"{'fsrep quick resync':<28}{quick_bytes:>14}{quick_time:>10.2f}")
    print(f"{'rsync --inplace -I':<28}{rsync_bytes:>14}{rsync_time:>10.2f}")
    print(f"{'full copy (fsrep baseline)':<28}{size:>14}{baseline_time:>10.2f}")
    print(f"{'cp of the same data':<28}{'-':>14}{cp_time:>10.2f}")
    print(f"\nquick resync bytes / dirty bytes: {quick_bytes / dirty:.2f} (aim <= 1.1)")
    print(f"rsync time / quick resync time:   {rsync_time / quick_time:.1f}x (aim >= 10)")
    print(f"baseline {size / MiB / baseline_time:.0f} MiB/s vs cp {size / MiB / cp_time:.0f} MiB/s")
    if args.only != "file":
        with workdir(args.dir) as base:
            trees(base, counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
