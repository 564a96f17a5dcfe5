#!/usr/bin/env python3
"""Write benchmark for fsrep, every configuration measured in the same run:

  (a) raw       the store directory itself, no FUSE
  (b) local     fsrep mounted with an unreachable secondary (local passthrough)
  (c) repl      fsrep replicating to a secondary on 127.0.0.1
  (d) repl-wb   as (c), mounted with --writeback-cache
  (e) repl-tls  as (c), over mutual TLS (only with --tls; certificates made
                with openssl for the run)

Workloads, in this order on each configuration (fresh stores every time):
  fsync  4 KiB pwrite + fsync, COUNT times: mean and p99 microseconds per pair
  seq    SIZE MiB in 1 MiB os.write() blocks, then fsync (timed): MiB/s
  files  N new files of 1 KiB (open O_CREAT|O_EXCL, write, close): files/s

Rounds are interleaved (a b c d, then d c b a, ...) and medians printed.
After each replicated configuration the replica is compared with the
primary store, and both daemons' logs are scanned for warnings and errors.

example:
  .venv/bin/python bench/write.py                 # defaults, a few minutes
  .venv/bin/python bench/write.py --quick         # smoke run, seconds
  .venv/bin/python bench/write.py --json --dir /srv/scratch
  .venv/bin/python bench/write.py --tls            # (e) too: what TLS costs next to (c)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.certs, for --tls
from _common import (  # noqa: E402
    UNREACHABLE,
    BenchError,
    Primary,
    Secondary,
    cpu_seconds,
    daemon_notes,
    ensure_key,
    install_signal_handlers,
    mounted,
    replica_problems,
    secondary,
    workdir,
)

BLOCK = 1024 * 1024
SMALL = 1024
CONFIGS = {  # name: (letter, description, mount options or None for the raw directory)
    "raw": ("a", "raw store directory (no FUSE)", None),
    "local": ("b", "fsrep, no secondary (local passthrough)", ()),
    "repl": ("c", "fsrep, replicating to 127.0.0.1", ()),
    "repl-wb": ("d", "fsrep, replicating, --writeback-cache", ("--writeback-cache",)),
    "repl-tls": ("e", "fsrep, replicating over mutual TLS", ()),  # with --tls only
}
METRICS = {  # name: (column title, format, higher is better)
    "seq_mib_s": ("seq MiB/s", "{:.1f}", True),
    "fsync_mean_us": ("fsync mean us", "{:.0f}", False),
    "fsync_p99_us": ("fsync p99 us", "{:.0f}", False),
    "files_per_s": ("files/s", "{:.0f}", True),
}
AIM = 0.6


# --- workloads ---------------------------------------------------------------------


def sequential_write(root: Path, size_mib: int) -> float:
    """MiB/s writing *size_mib* MiB in 1 MiB blocks; the final fsync is timed."""
    block = os.urandom(BLOCK)
    path = root / "seq"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for _ in range(size_mib):
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    os.unlink(path)
    return size_mib / elapsed


def fsync_writes(root: Path, count: int) -> tuple[float, float]:
    """Mean and p99 (nearest rank) microseconds of a 4 KiB pwrite + fsync."""
    data = os.urandom(4096)
    fd = os.open(root / "fsync", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    samples = []
    try:
        for i in range(count):
            start = time.perf_counter()
            os.pwrite(fd, data, i * 4096)
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        os.close(fd)
    samples.sort()
    return statistics.fmean(samples), samples[max(0, math.ceil(0.99 * len(samples)) - 1)]


def small_files(root: Path, count: int) -> float:
    """Files per second creating *count* files of 1 KiB in one directory."""
    data = os.urandom(SMALL)
    directory = root / "small"
    directory.mkdir()
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(directory / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return count / (time.perf_counter() - start)


# --- one configuration, one round ------------------------------------------------------------


@dataclass
class Run:
    """The figures and observations of one configuration in one round."""

    config: str
    figures: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU-s per wall-s during seq, per daemon
    states: list[str] = field(default_factory=list)  # group state before and after the workloads
    problems: list[str] = field(default_factory=list)
    log_notes: Counter[str] = field(default_factory=Counter)


def workloads(run: Run, root: Path, args: argparse.Namespace, pids: dict[str, int | None]) -> None:
    mean, p99 = fsync_writes(root, args.fsync_writes)
    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    start = time.perf_counter()
    run.figures["seq_mib_s"] = sequential_write(root, args.size_mib)
    wall = time.perf_counter() - start
    run.cpu = {who: (cpu_seconds(pid) - before[who]) / wall for who, pid in pids.items()}
    run.figures["fsync_mean_us"], run.figures["fsync_p99_us"] = mean, p99
    run.figures["files_per_s"] = small_files(root, args.files)


def measure(config: str, base: Path, args: argparse.Namespace) -> Run:
    """Fresh stores, the workloads, then every check; everything this
    configuration started is stopped before returning."""
    run = Run(config)
    options = CONFIGS[config][2]
    base.mkdir(parents=True)
    os.sync()  # no dirty pages of the previous configuration
    if options is None:
        store = base / "store"
        store.mkdir()
        workloads(run, store, args, {})
        return run
    key = ensure_key(base / "key")
    sec: Secondary | None = None
    primary: Primary | None = None
    group: dict[str, Any] = {}
    try:
        if config == "local":
            with mounted(base / "primary", base / "mnt", key, UNREACHABLE, *options) as primary:
                group = primary.status()
                run.states.append(group["state"])
                workloads(run, primary.mountpoint, args, {"primary": primary.pid})
                run.states.append(primary.status()["state"])
            if run.states[-1] != "OutOfSync":
                run.problems.append(f"expected OutOfSync without a secondary, the group is {run.states[-1]}")
        else:
            serve_tls, mount_tls = _tls_options(base / "pki") if config == "repl-tls" else ([], [])
            with secondary(base / "secondary", key, extra=serve_tls) as sec, \
                    mounted(base / "primary", base / "mnt", key, sec.address, *options, *mount_tls) as primary:
                group = primary.status()
                run.states.append(group["state"])
                if group["state"] != "InSync":
                    raise BenchError(f"{config}: the group is {group['state']} after mounting, not InSync "
                                     f"({group.get('last_error') or group.get('stale_reason')}); "
                                     f"see {primary.log}")
                workloads(run, primary.mountpoint, args, {"primary": primary.pid, "secondary": sec.pid})
                after = primary.status()
                run.states.append(after["state"])
                if after["state"] != "InSync":
                    run.problems.append(f"the group left InSync during the run: {after['state']} "
                                        f"({after.get('last_error') or after.get('stale_reason')}); "
                                        f"these figures are not replicated ones")
            # both daemons are stopped: the replica must equal the primary store
            run.problems += replica_problems(primary, sec, group["id"])
    finally:
        run.log_notes.update(daemon_notes(primary, sec))
        if primary is not None:
            run.problems += primary.cleanup_notes
    return run


def _tls_options(directory: Path) -> tuple[list[str], list[str]]:
    """The TLS options of ``fsrep serve`` and of ``fsrep mount``, with a new
    CA and a certificate for each side (made by openssl, as README shows)."""
    from tests.certs import issue, make_ca
    ca = make_ca(directory, "ca")
    return issue(ca, "secondary").args(), issue(ca, "primary").args()


# --- report ----------------------------------------------------------------------------


def ratio(metric: str, num: dict[str, float], den: dict[str, float]) -> float:
    """num relative to den, as a throughput ratio (for latencies den/num)."""
    if METRICS[metric][2]:
        return num[metric] / den[metric]
    return den[metric] / num[metric]


def summarize(runs: list[Run], args: argparse.Namespace, base: Path, load_start: float) -> dict[str, Any]:
    measured = [c for c in CONFIGS if any(r.config == c for r in runs)]
    by_config = {c: [r for r in runs if r.config == c] for c in measured}
    medians = {c: {m: statistics.median(r.figures[m] for r in rs) for m in METRICS} for c, rs in by_config.items()}
    pairs = [(num, den) for num in ("repl", "repl-wb", "repl-tls") for den in ("raw", "local")]
    pairs.append(("repl-tls", "repl"))
    ratios = {}
    for num, den in pairs:
        if num in medians:
            label = f"{CONFIGS[num][0]}/{CONFIGS[den][0]}"
            ratios[label] = {m: ratio(m, medians[num], medians[den]) for m in METRICS}
    aim = ratios["c/b"]["seq_mib_s"]
    notes: dict[str, Counter[str]] = {c: Counter() for c in measured}
    for r in runs:
        notes[r.config].update(r.log_notes)
    return {
        "parameters": {"size_mib": args.size_mib, "fsync_writes": args.fsync_writes, "files": args.files,
                       "file_size": SMALL, "rounds": args.rounds, "dir": str(base)},
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                 "loadavg_1min_start": load_start, "loadavg_1min_end": os.getloadavg()[0]},
        "configurations": {c: {"letter": CONFIGS[c][0], "description": CONFIGS[c][1], "median": medians[c],
                               "rounds": [r.figures for r in by_config[c]],
                               "seq_cpu_per_wall_s": {who: statistics.median(r.cpu[who] for r in by_config[c])
                                                      for who in by_config[c][0].cpu},
                               "group_states": [r.states for r in by_config[c]],
                               "problems": [p for r in by_config[c] for p in r.problems],
                               "log_notes": dict(notes[c])}
                           for c in measured},
        "ratios": ratios,
        "aim": {"what": f"replicated sequential write >= {AIM} x local passthrough", "ratio": aim,
                "met": aim >= AIM, "ratio_writeback_cache": ratios["d/b"]["seq_mib_s"]},
    }


def print_report(s: dict[str, Any]) -> None:
    p, confs = s["parameters"], s["configurations"]
    h = s["host"]
    print(f"\nfsrep write benchmark: medians of {p['rounds']} interleaved round(s); {h['cpus']} CPUs, "
          f"kernel {h['kernel']}, load average {h['loadavg_1min_start']:.2f} at start, "
          f"{h['loadavg_1min_end']:.2f} at end; stores under {p['dir']}")
    print(f"  seq:   {p['size_mib']} MiB in 1 MiB writes + final fsync (timed)")
    print(f"  fsync: {p['fsync_writes']} x (4 KiB pwrite + fsync), latency per pair")
    print(f"  files: {p['files']} new files of {p['file_size']} bytes (open, write, close)\n")
    head = f"{'configuration':<46}" + "".join(f"{METRICS[m][0]:>15}" for m in METRICS)
    print(head)
    print("-" * len(head))
    for c in confs.values():
        print(f"({c['letter']}) {c['description']:<42}"
              + "".join(f"{METRICS[m][1].format(c['median'][m]):>15}" for m in METRICS))
    if p["rounds"] > 1:
        print("\nspread over the rounds (min..max)")
        for c in confs.values():
            print(f"({c['letter']}) " + "   ".join(
                f"{METRICS[m][0]} {METRICS[m][1].format(min(r[m] for r in c['rounds']))}.."
                f"{METRICS[m][1].format(max(r[m] for r in c['rounds']))}" for m in METRICS))
    print("\nratios (higher is better; fsync columns are throughput-equivalent: "
          "baseline latency / replicated latency)")
    print(f"{'':<34}" + "".join(f"{METRICS[m][0]:>15}" for m in METRICS))
    names = {"a": "raw", "b": "local", "c": "replicated", "d": "replicated-wb", "e": "replicated-tls"}
    for label, values in s["ratios"].items():
        num, den = label.split("/")
        print(f"{label}  ({names[num]} vs {names[den]})".ljust(34) + "".join(f"{values[m]:>15.2f}" for m in METRICS))
    print("\ndaemon CPU during the sequential write (CPU seconds per wall-clock second; 1.00 = one core busy)")
    for c in confs.values():
        if c["seq_cpu_per_wall_s"]:
            print(f"({c['letter']}) " + ", ".join(f"{who} {v:.2f}" for who, v in c["seq_cpu_per_wall_s"].items()))
    print("\nchecks")
    for name, c in confs.items():
        states = sorted({" -> ".join(st) for st in c["group_states"] if st})
        line = f"({c['letter']}) " + (f"group state {', '.join(states)}" if states else "no fsrep")
        if name.startswith("repl") and not c["problems"]:
            line += "; replica identical to the primary store after every round"
        print(line)
        for problem in c["problems"]:
            print(f"    PROBLEM: {problem}")
        for note, count in sorted(c["log_notes"].items()):
            print(f"    log: {note}" + (f"  (x{count})" if count > 1 else ""))
    aim = s["aim"]
    print(f"\naim: {aim['what']}: {'MET' if aim['met'] else 'NOT MET'} "
          f"(c/b = {aim['ratio']:.2f}; with --writeback-cache d/b = {aim['ratio_writeback_cache']:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="base directory; the stores go to a fresh directory inside it, removed "
                                      "at the end (default: /var/tmp)")
    parser.add_argument("--size-mib", type=int, default=1024, help="sequential write size (default 1024)")
    parser.add_argument("--fsync-writes", type=int, default=500, help="4 KiB write+fsync pairs (default 500)")
    parser.add_argument("--files", type=int, default=2000, help="small files to create (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 MiB, 50 fsyncs, 200 files, 1 round")
    parser.add_argument("--keep", action="store_true", help="keep the stores and logs afterwards")
    parser.add_argument("--tls", action="store_true", help="measure (e), replication over mutual TLS, too")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.fsync_writes, args.files, args.rounds = 64, 50, 200, 1
    if min(args.size_mib, args.fsync_writes, args.files, args.rounds) < 1:
        parser.error("sizes and counts must be at least 1")
    install_signal_handlers()
    load_start = os.getloadavg()[0]
    runs: list[Run] = []
    try:
        with workdir(args.dir, keep=args.keep) as base:
            for round_ in range(args.rounds):
                active = [c for c in CONFIGS if args.tls or c != "repl-tls"]
                order = active if round_ % 2 == 0 else list(reversed(active))
                for config in order:
                    started = time.monotonic()
                    runs.append(measure(config, base / f"round{round_ + 1}" / config, args))
                    print(f"round {round_ + 1}/{args.rounds}: {config:<8} {time.monotonic() - started:5.1f}s  "
                          + "  ".join(f"{METRICS[m][0]} {METRICS[m][1].format(v)}"
                                      for m, v in runs[-1].figures.items()), file=sys.stderr, flush=True)
            summary = summarize(runs, args, base, load_start)
    except BenchError as exc:
        print(f"bench/write.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"bench/write.py: interrupted ({exc or 'SIGINT'}); everything started was stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
