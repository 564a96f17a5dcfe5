#!/usr/bin/env python3
"""Write benchmark: sequential write, 4 KiB write+fsync latency and small
file creation, for the raw store directory, fsrep with no secondary (local
passthrough) and fsrep replicating to 127.0.0.1 — all measured in one run.

    .venv/bin/python bench/write.py [--size-mib 1024] [--fsync-writes 500] [--files 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import configuration, workdir  # noqa: E402

CONFIGS = ("raw", "local", "replicated", "replicated-wb")
BLOCK = 1024 * 1024


def sequential_write(root: Path, size_mib: int) -> float:
    """MiB/s writing SIZE MiB in 1 MiB blocks, final fsync included."""
    block = os.urandom(BLOCK)
    fd = os.open(root / "seq", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for _ in range(size_mib):
        os.write(fd, block)
    os.fsync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    os.unlink(root / "seq")
    return size_mib / elapsed


def fsync_writes(root: Path, count: int) -> tuple[float, float]:
    """Mean and p99 microseconds of a 4 KiB write followed by fsync."""
    data = os.urandom(4096)
    fd = os.open(root / "fsync", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    samples = []
    for i in range(count):
        start = time.perf_counter()
        os.pwrite(fd, data, i * 4096)
        os.fsync(fd)
        samples.append((time.perf_counter() - start) * 1e6)
    os.close(fd)
    samples.sort()
    return statistics.fmean(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def small_files(root: Path, count: int) -> float:
    """Files per second creating COUNT files of 1 KiB."""
    data = os.urandom(1024)
    (root / "small").mkdir()
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(root / "small" / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="where to put the stores (default: a temp dir in /var/tmp)")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--fsync-writes", type=int, default=500)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.fsync_writes, args.files, args.rounds = 64, 50, 200, 1
    samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in CONFIGS}
    with workdir(args.dir) as base:
        for round_ in range(args.rounds):
            order = CONFIGS if round_ % 2 == 0 else tuple(reversed(CONFIGS))  # spread drift evenly
            for kind in order:
                os.sync()  # start each measurement without the previous one's dirty pages
                with configuration(kind, base / f"r{round_}") as root:
                    mean, p99 = fsync_writes(root, args.fsync_writes)
                    samples[kind].append({
                        "seq_write_mib_s": sequential_write(root, args.size_mib),
                        "fsync_write_mean_us": mean,
                        "fsync_write_p99_us": p99,
                        "small_files_per_s": small_files(root, args.files),
                    })
                print(f"round {round_ + 1}/{args.rounds}: measured {kind}", file=sys.stderr, flush=True)
    results = {kind: {metric: statistics.median(s[metric] for s in runs) for metric in runs[0]}
               for kind, runs in samples.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\nmedians of {args.rounds} interleaved rounds; sequential write {args.size_mib} MiB "
          f"(1 MiB blocks, final fsync), {args.fsync_writes} x (4 KiB write + fsync), {args.files} small files\n")
    print(f"{'configuration':<16}{'seq MiB/s':>12}{'fsync mean us':>16}{'fsync p99 us':>15}{'files/s':>10}")
    for kind, r in results.items():
        print(f"{kind:<16}{r['seq_write_mib_s']:>12.1f}{r['fsync_write_mean_us']:>16.0f}"
              f"{r['fsync_write_p99_us']:>15.0f}{r['small_files_per_s']:>10.0f}")
    print("\nratios (higher is better; for latency: baseline latency / replicated latency)")
    for rep in ("replicated", "replicated-wb"):
        for base_kind, label in (("raw", "c/a"), ("local", "c/b")):
            r, b = results[rep], results[base_kind]
            print(f"  {rep:<14} {label} ({base_kind:<5}): seq {r['seq_write_mib_s'] / b['seq_write_mib_s']:.2f}  "
                  f"fsync {b['fsync_write_mean_us'] / r['fsync_write_mean_us']:.2f}  "
                  f"files {r['small_files_per_s'] / b['small_files_per_s']:.2f}")
    best = max(results["replicated"]["seq_write_mib_s"], results["replicated-wb"]["seq_write_mib_s"])
    ratio = results["replicated"]["seq_write_mib_s"] / results["local"]["seq_write_mib_s"]
    print(f"\naim: replicated sequential write >= 0.6 x local passthrough: "
          f"{'MET' if ratio >= 0.6 else 'NOT MET'} ({ratio:.2f} default mode, "
          f"{best / results['local']['seq_write_mib_s']:.2f} best mode)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
