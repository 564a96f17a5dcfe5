#!/usr/bin/env python3
"""The benchmark of issue #5: fsrep next to the raw directory, itself
without a secondary, over loopback and over a 1 ms link, and GlusterFS, on
the same workloads in one run; medians of interleaved rounds, ratios, the
issue's aims checked, and a report (Markdown, JSON, PNG).

Targets: raw, fsrep-alone, fsrep-loopback, fsrep-1ms, glusterfs, and rsync
(repair only). Workloads: seq_write, seq_read, write_fsync, random_jobs,
files, real, repair (see bench/_workloads.py and the report's "How"). After
the rounds, bench/snapshot.py once (what pseudo snapshots cost a writer, and
a resync from one next to a checksum resync), unless --no-snapshots.

It installs what it misses (fio, glusterfs-server, glusterfs-client, rsync,
iproute2 with apt-get; matplotlib with pip) and stops everything it starts
(mounts, daemons, namespaces, glusterd) at the end, also on errors, Ctrl-C
and SIGTERM. Must run as root (FUSE, namespaces, drop_caches, GlusterFS).

examples:
  .venv/bin/python bench/run.py                        # everything, 3 rounds (about 20 minutes)
  .venv/bin/python bench/run.py --smoke --out /tmp/r   # seconds: tiny sizes, 1 round, no GlusterFS
  .venv/bin/python bench/run.py --targets raw,fsrep-loopback --rounds 1 --size-mib 64
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
import _workloads as wl  # noqa: E402
import snapshot as snapshot_bench  # noqa: E402
from _common import BenchError, ensure_key, install_signal_handlers, shielded, workdir  # noqa: E402
from _deps import ensure_debian, ensure_matplotlib  # noqa: E402
from _peers import Gluster, Link, delayed_link, glusterfs  # noqa: E402
from _targets import TARGETS, Site, fsrep_alone, fsrep_replicated, gluster_round, raw, rsync_repair  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALL_WORKLOADS = ["seq_write", "seq_read", "write_fsync", "random_jobs", "files", "real", "repair"]
REPLICATED = {"fsrep-loopback", "fsrep-1ms", "glusterfs"}
APT = {"fio": "fio", "rsync": "rsync", "ip": "iproute2", "glusterd": "glusterfs-server",
       "mount.glusterfs": "glusterfs-client"}


def workloads_of(target: str) -> list[str]:
    """What runs on *target*: repair needs a replica to take down (rsync
    does nothing else)."""
    if target == "rsync":
        return ["repair"]
    return [w for w in ALL_WORKLOADS if w != "repair" or target in REPLICATED]


@dataclass
class Plan:
    targets: list[str]
    rounds: int
    sizes: wl.Sizes
    base: str | None
    out: Path
    keep: bool
    results: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tarball: dict[str, int] = field(default_factory=dict)
    rtt_ms: float | None = None
    render: Path | None = None  # only rewrite the report files from this report.json
    snapshot_params: snapshot_bench.Params | None = None  # None: bench/snapshot.py is left out
    snapshots: dict[str, Any] | None = None  # what it measured
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])


# --- one target, one round --------------------------------------------------------------


@dataclass
class Env:
    """What lives for the whole run: the work directory, the key, the
    tarball, the delayed link and the GlusterFS volume (each if needed)."""

    base: Path
    key: Path
    tarball: Path
    link: Link | None = None
    gluster: Gluster | None = None


@contextlib.contextmanager
def open_target(target: str, env: Env, round_no: int) -> Iterator[Site]:
    base = env.base / f"round{round_no}" / target
    base.mkdir(parents=True)
    try:
        if target in ("raw", "rsync"):
            cm = raw(base)
        elif target == "fsrep-alone":
            cm = fsrep_alone(base, env.key)
        elif target == "fsrep-loopback":
            cm = fsrep_replicated(base, env.key)
        elif target == "fsrep-1ms":
            assert env.link is not None
            cm = fsrep_replicated(base, env.key, env.link)
        else:
            assert env.gluster is not None
            cm = gluster_round(env.gluster, round_no)
        with cm as site:
            yield site
    finally:
        with shielded():
            shutil.rmtree(base, ignore_errors=True)


def run_workload(workload: str, target: str, site: Site, plan: Plan, env: Env) -> dict[str, float]:
    root, sizes = site.root, plan.sizes
    simple: dict[str, Callable[[Path, wl.Sizes], dict[str, float]]] = {
        "seq_write": wl.seq_write, "seq_read": wl.seq_read, "write_fsync": wl.write_fsync_latency,
        "random_jobs": wl.random_jobs, "files": wl.create_delete}
    if workload in simple:
        return simple[workload](root, sizes)
    if workload == "real":
        return wl.unpack_and_sqlite(root, sizes, env.tarball)
    regions = wl.repair_regions(sizes)
    if target == "rsync":
        return rsync_repair(root, lambda p: wl.fill(p, sizes.seq_mib), lambda p: wl.rewrite(p, regions))
    assert site.peer_down is not None
    assert site.peer_back is not None
    wl.fill(root / "repair.img", sizes.seq_mib)
    site.peer_down()
    wl.rewrite(root / "repair.img", regions)
    return site.peer_back()


def measure(target: str, round_no: int, plan: Plan, env: Env) -> None:
    """Every workload of *target* in one round, on a fresh set-up; the
    figures and checks go into *plan*."""
    checks = plan.checks.setdefault(target, {"replica_equal": [], "problems": [], "log_notes": {}, "states": []})
    site = None
    workload = "set-up"
    try:
        with open_target(target, env, round_no) as site:
            for workload in workloads_of(target):
                started = time.monotonic()
                try:
                    figures = run_workload(workload, target, site, plan, env)
                except (OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
                    raise BenchError(str(exc)) from None
                plan.results.setdefault(target, {}).setdefault(workload, []).append(figures)
                print(f"round {round_no}/{plan.rounds} {target:<15} {workload:<12} "
                      f"{time.monotonic() - started:6.1f}s  "
                      + "  ".join(f"{k} {v:.4g}" for k, v in figures.items()), file=sys.stderr, flush=True)
            workload = "checks"
    except BenchError as exc:  # this target's round is lost; the others go on and the report says so
        failure = f"round {round_no}, {workload}: {exc}"
        plan.failures.append(f"{target}: {failure}")
        checks["problems"].append(f"FAILED {failure}")
        print(f"round {round_no}/{plan.rounds} {target:<15} FAILED {workload}: {exc}", file=sys.stderr, flush=True)
    finally:
        if site is not None:
            if site.replica_equal is not None:
                checks["replica_equal"].append(site.replica_equal)
            checks["problems"] += site.problems
            checks["states"].append(site.states)
            for note, count in site.log_notes.items():
                checks["log_notes"][note] = checks["log_notes"].get(note, 0) + count


# --- the run ---------------------------------------------------------------------------------


def install(plan: Plan) -> None:
    needed = {"fio", "ip"} | ({"rsync"} if "rsync" in plan.targets else set())
    if "glusterfs" in plan.targets:
        needed |= {"glusterd", "mount.glusterfs"}
    ensure_debian(sorted({APT[n] for n in needed}))
    ensure_matplotlib()
    for command in sorted(needed):
        if shutil.which(command) is None and not Path("/usr/sbin", command).exists() \
                and not Path("/sbin", command).exists():
            raise BenchError(f"{command} is still missing after installing {APT[command]}")


def run(plan: Plan) -> None:
    with contextlib.ExitStack() as stack:
        try:
            base = stack.enter_context(workdir(plan.base, keep=plan.keep))
        except OSError as exc:
            raise BenchError(f"cannot make the work directory under {plan.base or '/var/tmp'}: {exc}") from None
        env = Env(base, ensure_key(base / "key"), base / "source.tar")
        if any("real" in workloads_of(t) for t in plan.targets):
            plan.tarball = wl.make_tarball(Path(sysconfig.get_paths()["purelib"]), env.tarball,
                                           plan.sizes.tarball_mib)
        if "fsrep-1ms" in plan.targets:
            env.link = stack.enter_context(delayed_link(one_way_us=500))
            plan.rtt_ms = env.link.rtt_ms
        if "glusterfs" in plan.targets:
            env.gluster = stack.enter_context(glusterfs(base / "glusterfs"))
        for round_no in range(1, plan.rounds + 1):
            order = plan.targets if round_no % 2 else list(reversed(plan.targets))
            for target in order:
                os.sync()  # no dirty pages of the previous target
                measure(target, round_no, plan, env)
        if plan.snapshot_params is not None:
            measure_snapshots(plan, env)


def measure_snapshots(plan: Plan, env: Env) -> None:
    """bench/snapshot.py's two parts, once, after the rounds."""
    assert plan.snapshot_params is not None
    started = time.monotonic()
    try:
        plan.snapshots = snapshot_bench.measure(env.base / "snapshots", env.key, plan.snapshot_params)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:
        plan.failures.append(f"snapshots: {exc}")
        print(f"snapshots FAILED: {exc}", file=sys.stderr, flush=True)
        return
    print(f"snapshots {time.monotonic() - started:6.1f}s", file=sys.stderr, flush=True)


# --- the report -----------------------------------------------------------------------------


def _first_line(argv: list[str], default: str = "not installed") -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        lines = (done.stdout or done.stderr).strip().splitlines()
        if lines:
            return lines[0].strip()
    return default


def machine(plan: Plan) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], "unknown")
    if _first_line(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], ""):
        commit += " (with uncommitted changes)"
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "loadavg_start": plan.load_start, "loadavg_end": os.getloadavg()[0],
            "fio": _first_line(["fio", "--version"]), "glusterfs": _first_line(["glusterfs", "--version"]),
            "commit": commit}


def method_notes(plan: Plan) -> list[str]:
    s = plan.sizes
    notes = [
        f"seq_write / seq_read: fio, psync, 1 MiB blocks, a {s.seq_mib} MiB file; the write's fio runtime includes "
        "its end_fsync; before the read `sync; echo 3 > /proc/sys/vm/drop_caches`.",
        f"write_fsync: {s.latency_ops} × (os.pwrite of 4 KiB at a random aligned offset of a {s.latency_file_mib} "
        "MiB file + os.fsync), each pair timed in Python with perf_counter; fio's write clat and sync lat "
        "are separate distributions whose percentiles cannot be added.",
        f"random_jobs: fio randwrite, bs 4k, numjobs 4 (a {s.jobs_file_mib} MiB file each), fsync=32, "
        f"{s.jobs_seconds} s time-based; IOPS of all jobs together.",
        f"files: {s.files} files of 4 KiB created (O_CREAT|O_EXCL, write, close) in one directory, then unlinked.",
        f"real: tar -xf of a tarball of this venv's site-packages ({plan.tarball.get('files', 0)} files, "
        f"{plan.tarball.get('bytes', 0) / 2**20:.0f} MiB), then sqlite3 with {s.transactions} transactions of one "
        "INSERT + COMMIT (rollback journal, synchronous=FULL).",
        f"repair: a {s.seq_mib} MiB file written, the replica taken down, {s.repair_percent:g}% of its 4 KiB "
        "regions rewritten at random (the same regions everywhere), the replica back. fsrep: the secondary "
        "stopped (SIGTERM) and started again, a quick resync requested at once (as fsrep-resync does), the "
        "time until the status (what `fsrep status --json` prints, read from the control socket every 20 ms) "
        "is InSync; `resync only` is the daemon's own last_resync_seconds. GlusterFS: one brick's process "
        "killed (SIGKILL), then `gluster volume start VOL force`, `gluster volume heal VOL`, polling `gluster "
        "volume heal VOL info` until no entries. rsync: `rsync -I --inplace --no-whole-file` of the changed "
        "file onto a copy in another plain directory.",
    ]
    if "fsrep-1ms" in plan.targets:
        notes.append("fsrep-1ms: the primary daemon in network namespace A (nsenter --net, so its FUSE mount is "
                     "seen by all), the secondary in namespace B. This kernel has no sch_netem, so instead of "
                     "veth + `tc netem delay 0.5ms` the namespaces are joined by TUN devices and a delay line "
                     "(bench/_delayline.py) holding each packet 0.5 ms each way; round-trip time measured "
                     f"(TCP connect to a closed port, median of 30): {plan.rtt_ms:.2f} ms.")
    if "glusterfs" in plan.targets:
        notes.append("glusterfs: glusterd started directly with a copy of glusterd.vol (bind-address 127.0.0.1, "
                     "its state in the work directory), `--mode=script`, volume `replica 2 ... force` with both "
                     "bricks on this disk, mounted with `mount -t glusterfs 127.0.0.1:/VOL`; default volume "
                     "options. The brick host is a name resolving to 127.0.0.1 (the bricks reach glusterd "
                     "through it).")
    return notes


def summarize(plan: Plan) -> dict[str, Any]:
    medians = _report.medians(plan.results)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(plan),
        "parameters": {"rounds": plan.rounds, "dir": plan.base or "/var/tmp", **plan.sizes.__dict__,
                       "tarball": plan.tarball, "rtt_ms": plan.rtt_ms},
        "targets": plan.targets,
        "target_descriptions": {t: TARGETS[t] for t in plan.targets},
        "workloads": {t: workloads_of(t) for t in plan.targets},
        "medians": medians,
        "rounds": plan.results,
        "aims": _report.aims(medians),
        "checks": plan.checks,
        "method": method_notes(plan),
        "snapshots": plan.snapshots,
    }


# --- command line ---------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes (8 MiB files, 50 files), 1 round, no GlusterFS: a check that it works")
    parser.add_argument("--targets", help=f"comma-separated, from {','.join(TARGETS)} (default: all)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, medians reported (default 3; smoke 1)")
    parser.add_argument("--size-mib", type=int, help="sequential and repair file size (default 1024; smoke 8)")
    parser.add_argument("--no-glusterfs", action="store_true", help="leave the glusterfs target out")
    parser.add_argument("--no-snapshots", action="store_true", help="leave bench/snapshot.py out")
    parser.add_argument("--out", type=Path, default=HERE, help="where the report files go (default: bench/)")
    parser.add_argument("--dir", help="base directory for the stores (a fresh directory inside; default /var/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    parser.add_argument("--render", type=Path, metavar="REPORT_JSON",
                        help="measure nothing: write the report files to --out again from a report.json")
    args = parser.parse_args(argv)
    if args.render is not None:
        return Plan([], 0, wl.Sizes(), None, args.out.resolve(), False, render=args.render)
    targets = args.targets.split(",") if args.targets else list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    if args.no_glusterfs or (args.smoke and not args.targets):
        targets = [t for t in targets if t != "glusterfs"]
    sizes = wl.Sizes.smoke() if args.smoke else wl.Sizes()
    if args.size_mib is not None:
        if args.size_mib < 1:
            parser.error("--size-mib must be at least 1")
        sizes = sizes.with_seq(args.size_mib)
    rounds = args.rounds if args.rounds is not None else (1 if args.smoke else 3)
    if rounds < 1 or not targets:
        parser.error("need at least one round and one target")
    snapshots = None if args.no_snapshots else \
        snapshot_bench.Params.quick() if args.smoke else snapshot_bench.Params(size_mib=sizes.seq_mib)
    return Plan(targets, rounds, sizes, args.dir, args.out.resolve(), args.keep, snapshot_params=snapshots)


def render(source: Path, out: Path) -> int:
    """Rewrite the report files from a finished run's report.json (the
    numbers stay; the text around them may have changed)."""
    try:
        summary = json.loads(source.read_text())
        paths = _report.write_all(summary, out)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench/run.py: error: cannot render {source}: {exc}", file=sys.stderr)
        return 1
    print(f"report: {', '.join(str(p) for p in paths)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    if plan.render is not None:
        return render(plan.render, plan.out)
    install_signal_handlers()
    started = time.monotonic()
    try:
        if os.geteuid() != 0:
            raise BenchError("must run as root (FUSE mounts, namespaces, drop_caches, GlusterFS)")
        install(plan)
        run(plan)
        summary = summarize(plan)
        paths = _report.write_all(summary, plan.out)
    except (BenchError, OSError, subprocess.SubprocessError) as exc:  # set-up steps not wrapped in a BenchError
        print(f"bench/run.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"bench/run.py: interrupted ({exc or 'SIGINT'}); everything started was stopped", file=sys.stderr)
        return 130
    print(_report.stdout_table(summary["medians"], plan.targets))
    print()
    print("\n".join(_report.aims_lines(summary["aims"])))
    if plan.snapshots is not None:
        print("\n".join(snapshot_bench.aim_lines(plan.snapshots)))
    problems = [f"{t}: {p}" for t, c in plan.checks.items() for p in c["problems"]]
    problems += [f"snapshots: {p}" for p in (plan.snapshots or {}).get("problems", [])]
    for problem in problems:
        print(f"PROBLEM {problem}")
    print(f"\n{time.monotonic() - started:.0f}s; report: {', '.join(str(p) for p in paths)}")
    if plan.failures:
        print(f"bench/run.py: error: {len(plan.failures)} target round(s) failed; first: {plan.failures[0]}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
