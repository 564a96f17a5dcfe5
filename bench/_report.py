"""What ``bench/run.py`` reports: medians over the rounds, ratios to the raw
directory and to GlusterFS, the issue's aims checked against the numbers,
bench/snapshot.py's section when it ran, and the report files (Markdown,
JSON, a PNG of bar charts).

Ratios are speed-ups: above 1 means better than the reference, whichever
way the metric goes (for seconds and latencies it is reference / value).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import snapshot as snapshot_bench


@dataclass(frozen=True)
class Metric:
    title: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:.1f}"


WORKLOADS: dict[str, tuple[str, dict[str, Metric]]] = {  # name: (title, metrics)
    "seq_write": ("Sequential write, 1 MiB blocks, fsync at the end (fio)", {
        "MB_s": Metric("write", "MB/s", True)}),
    "seq_read": ("Sequential read, 1 MiB blocks, cold cache (fio, after drop_caches)", {
        "MB_s": Metric("read", "MB/s", True)}),
    "write_fsync": ("4 KiB random write + fsync, one writer (each pair timed in Python: os.pwrite + os.fsync)", {
        "p50_us": Metric("p50", "µs", False, "{:.0f}"), "p99_us": Metric("p99", "µs", False, "{:.0f}")}),
    "random_jobs": ("4 KiB random writes, 4 jobs, fsync every 32 writes (fio)", {
        "IOPS": Metric("random writes", "IOPS", True, "{:.0f}")}),
    "files": ("Create 4 KiB files, then delete them", {
        "create_per_s": Metric("create", "files/s", True, "{:.0f}"),
        "delete_per_s": Metric("delete", "files/s", True, "{:.0f}")}),
    "real": ("Unpack a tarball, then build an SQLite database in small transactions", {
        "unpack_s": Metric("unpack", "s", False, "{:.2f}"), "sqlite_s": Metric("sqlite", "s", False, "{:.2f}"),
        "total_s": Metric("total", "s", False, "{:.2f}")}),
    "repair": ("Repair after an outage: time until both copies are equal again", {
        "seconds": Metric("repair", "s", False, "{:.2f}"),
        "resync_s": Metric("resync only", "s", False, "{:.2f}"),
        "MB_sent": Metric("sent", "MB", False, "{:.1f}")}),
}
MAIN_METRIC = {"seq_write": "MB_s", "seq_read": "MB_s", "write_fsync": "p50_us", "random_jobs": "IOPS",
               "files": "create_per_s", "real": "total_s", "repair": "seconds"}

Medians = dict[str, dict[str, dict[str, float]]]  # target -> workload -> metric -> median


def medians(rounds: dict[str, dict[str, list[dict[str, float]]]]) -> Medians:
    """The median of each metric over the rounds it was measured in."""
    out: Medians = {}
    for target, workloads in rounds.items():
        for workload, runs in workloads.items():
            names = sorted({m for run in runs for m in run})
            out.setdefault(target, {})[workload] = {
                m: statistics.median(run[m] for run in runs if m in run) for m in names}
    return out


def speedup(metric: Metric, value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or value <= 0 or reference <= 0:
        return None
    return value / reference if metric.higher_is_better else reference / value


def value(m: Medians, target: str, workload: str, metric: str) -> float | None:
    return m.get(target, {}).get(workload, {}).get(metric)


# --- the aims of the issue ----------------------------------------------------------------

AIMS = [  # (what, (target, workload, metric), reference target, comparison, bound)
    # "ratio": target's value / reference's value; "faster": reference's time / target's time
    ("replicated seq write ≥ 0.8 × fsrep-alone", ("fsrep-loopback", "seq_write", "MB_s"), "fsrep-alone",
     "ratio", "≥", 0.8),
    ("replicated seq write ≥ 1.3 × GlusterFS", ("fsrep-loopback", "seq_write", "MB_s"), "glusterfs",
     "ratio", "≥", 1.3),
    ("4 KiB write+fsync p50 latency ≤ 0.5 × GlusterFS's", ("fsrep-loopback", "write_fsync", "p50_us"),
     "glusterfs", "ratio", "≤", 0.5),
    ("small-file create ≥ 2.5 × GlusterFS", ("fsrep-loopback", "files", "create_per_s"), "glusterfs",
     "ratio", "≥", 2.5),
    ("repair ≥ 10 × faster than rsync", ("fsrep-loopback", "repair", "seconds"), "rsync", "faster", "≥", 10.0),
    ("repair ≥ 30 × faster than GlusterFS self-heal", ("fsrep-loopback", "repair", "seconds"), "glusterfs",
     "faster", "≥", 30.0),
    ("fsrep-1ms seq write ≥ 0.7 × fsrep-loopback", ("fsrep-1ms", "seq_write", "MB_s"), "fsrep-loopback",
     "ratio", "≥", 0.7),
]


# Why an aim can be missed on this kind of machine, and what it would take:
# from profiles of both daemons (py-spy --native, strace -c) during each
# workload. Printed under an aim the run missed; keyed by the aim's target
# and workload, or by its workload alone.
WHY_MISSED = {
    ("fsrep-1ms", "seq_write"): (
        "This kernel has no sch_netem, so the 1 ms link is bench/_delayline.py, a Python relay between two "
        "TUN devices that copies every packet through user space on the same 2 cores as the writer and both "
        "daemons, one packet at a time (`ss -ti` during a 1 GiB write: smoothed round trip 2.1-3.6 ms "
        "against 0.96 ms at rest; the send window is never the limit); and under the sync policy each "
        "1 MiB write waits a full round trip for its ack before the kernel sends the next (no pipelining "
        "without the writeback cache), which alone caps it near 0.8x. What it would take: a kernel "
        "delay (netem, or an eBPF earliest-departure-time program with the fq qdisc) instead of the relay, "
        "and pipelined writes: `--writeback-cache`, or the semi-sync policy."),
    "seq_write": (
        "Without the kernel's writeback cache a writer's 1 MiB write() is one FUSE request, and the next "
        "comes only when it returns, after the secondary's ack: the chain is serial. The primary daemon "
        "is CPU-bound on it (py-spy during dd: the loopback TCP send, in which the kernel also does the "
        "receiver's half, ~11%; pyfuse3 copying the request into bytes ~8%; the local pwrite; Python per "
        "frame). fsrep alone copies each byte 4 times, replicated 6 (the secondary receives in place and "
        "writes; the primary sends each 128 KiB piece before writing it, so both hosts write at once), "
        "with the writer and both daemons sharing 2 cores. What it would take: the data path out of the "
        "interpreter (splice/vmsplice from /dev/fuse to the socket, a compiled splitter), or "
        "`--writeback-cache`, where the kernel batches and pipelines writes (write() then only fills the "
        "page cache; fsync and close still mean durable/applied on both sides, see the README)."),
    "write_fsync": (
        "A replicated 4 KiB write+fsync is two round trips (the write, then the fsync barrier, whose local "
        "and remote fsyncs run at once), and each round trip passes through two Python event loops: the "
        "pyfuse3 request, the send, the secondary's receive, apply and ack, the ack's receive, the reply — "
        "about 0.1 ms of interpreter time per step on this machine; a Python TCP ping-pong alone costs "
        "25-45 µs here. Both stores are on one ext4 file system, so the two fsyncs of a barrier also share "
        "one journal (two fsync loops at once on this disk: about 320 µs each, against 200 µs alone). "
        "GlusterFS takes the same hops in C. What it would take: a compiled data path (or a C FUSE front "
        "end that hands only metadata to Python)."),
    "files": (
        "Each new file is six FUSE requests (lookup, getattr of the directory, create, getxattr of "
        "security.capability, write, release), two of them replicated round trips (create, then the "
        "write), each paying the per-request interpreter cost described for the write+fsync latency; "
        "GlusterFS's create also goes to both bricks but in C. What it would take: the same compiled "
        "data path. The getxattr (also before every write elsewhere) would go if the daemon cleared "
        "privileges on write itself (FUSE_HANDLE_KILLPRIV_V2, after which the kernel sets SB_NOSEC), "
        "which neither libfuse 3.14 nor pyfuse3 can ask for."),
    "repair": (
        "The bytes sent are about the dirty bytes (see MB_sent), but 1% of a file's 4 KiB regions at random "
        "are thousands of separate runs: each costs a pread on the primary and a pwrite on the secondary, "
        "in Python (up to 64 runs share a descriptor and one WriteRuns frame), plus a floor of a few tens "
        "of milliseconds (reconnect, authentication, generation check, the run's bookkeeping) before any "
        "byte moves. What it would take: a compiled copy loop."),
}


def aims(m: Medians) -> list[dict[str, Any]]:
    """Each aim with its measured ratio and met (True/False), or met None
    when one side was not measured in this run."""
    out = []
    for what, (target, workload, metric), reference, kind, op, bound in AIMS:
        mine, theirs = value(m, target, workload, metric), value(m, reference, workload, metric)
        ratio = None
        if mine and theirs:
            ratio = mine / theirs if kind == "ratio" else theirs / mine
        met = None if ratio is None else (ratio >= bound if op == "≥" else ratio <= bound)
        out.append({"aim": what, "target": target, "reference": reference, "workload": workload,
                    "metric": metric, "kind": kind, "op": op, "bound": bound, "ratio": ratio, "met": met})
    return out


# --- text ---------------------------------------------------------------------------------


def _cell(metric: Metric, v: float | None) -> str:
    return "—" if v is None else metric.fmt.format(v)


def _ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


REFERENCES = ["raw", "rsync", "glusterfs"]


def workload_table(m: Medians, workload: str, targets: list[str]) -> list[str]:
    """Markdown rows: each target's medians, with its speed-ups over each
    reference (raw, rsync, GlusterFS) measured for that metric."""
    title, metrics = WORKLOADS[workload]
    rows = [t for t in targets if workload in m.get(t, {})]
    shown = [name for name in metrics if any(value(m, t, workload, name) is not None for t in rows)]
    head, columns = ["target"], []
    for name in shown:
        spec = metrics[name]
        refs = [r for r in REFERENCES if value(m, r, workload, name) is not None]
        head += [f"{spec.title} ({spec.unit})", *(f"vs {r}" for r in refs)]
        columns.append((name, refs))
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for target in rows:
        cells = [target]
        for name, refs in columns:
            spec, v = metrics[name], value(m, target, workload, name)
            cells += [_cell(spec, v), *(_ratio(speedup(spec, v, value(m, r, workload, name))) for r in refs)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def aims_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for aim in results:
        box = {True: "[x]", False: "[ ]", None: "[ ]"}[aim["met"]]
        verdict = {True: "met", False: "missed", None: "not measured"}[aim["met"]]
        relation = f"× faster than {aim['reference']}" if aim["kind"] == "faster" else f"× {aim['reference']}"
        got = "" if aim["ratio"] is None else \
            f": {aim['target']} = {aim['ratio']:.2f} {relation} (needs {aim['op']} {aim['bound']:g})"
        lines.append(f"- {box} {aim['aim']} — **{verdict}**{got}")
        why = WHY_MISSED.get((aim["target"], aim["workload"])) or WHY_MISSED.get(aim["workload"])
        if aim["met"] is False and why:
            lines.append(f"  - why, and what it would take: {why}")
    return lines


def stdout_table(m: Medians, targets: list[str]) -> str:
    """One line per target, the main metric of every workload."""
    cols = [w for w in WORKLOADS if any(w in m.get(t, {}) for t in targets)]
    heads = [f"{w} {WORKLOADS[w][1][MAIN_METRIC[w]].unit}" for w in cols]
    width = max(len(h) for h in heads) + 2
    out = [f"{'target':<16}" + "".join(f"{h:>{width}}" for h in heads)]
    for t in targets:
        cells = []
        for w in cols:
            spec = WORKLOADS[w][1][MAIN_METRIC[w]]
            cells.append(f"{_cell(spec, value(m, t, w, MAIN_METRIC[w])):>{width}}")
        out.append(f"{t:<16}" + "".join(cells))
    return "\n".join(out)


def markdown(summary: dict[str, Any]) -> str:
    m, targets, facts = summary["medians"], summary["targets"], summary["machine"]
    p = summary["parameters"]
    lines = [
        "# fsrep benchmark (issue #5)", "",
        f"Run {summary['date']}; medians of {p['rounds']} interleaved round(s) (round 1 of every target, "
        f"then round 2, ...; the target order alternates).", "",
        f"Machine: {facts['nproc']} CPUs ({facts['cpu']}), {facts['memory_gib']:.0f} GiB RAM, kernel "
        f"{facts['kernel']}, Python {facts['python']}, fio {facts['fio']}, {facts['glusterfs']}; fsrep commit "
        f"`{facts['commit']}`. Stores under {p['dir']}. Load average (1 min) {facts['loadavg_start']:.2f} at the "
        f"start, {facts['loadavg_end']:.2f} at the end (above 0 means something else ran too: compare only "
        "numbers of one run).", "",
        "## Aims", "", *aims_lines(summary["aims"]), "",
        "## Targets", "",
        *[f"- `{t}`: {summary['target_descriptions'][t]}" for t in targets], "",
        "## Results", "",
        "Ratios are speed-ups (above 1 = better than the reference, whichever way the metric goes).", "",
    ]
    for workload in WORKLOADS:
        if any(workload in m.get(t, {}) for t in targets):
            lines += workload_table(m, workload, targets) + [""]
    if summary.get("snapshots"):
        lines += ["## Pseudo snapshots (bench/snapshot.py)", "", *snapshot_bench.report_lines(summary["snapshots"]), ""]
    lines += ["## How", "", *[f"- {note}" for note in summary["method"]], ""]
    checks = summary["checks"]
    lines += ["## Checks", ""]
    for target in targets:
        c = checks.get(target, {})
        equal = c.get("replica_equal", [])
        line = f"- `{target}`"
        if equal and target == "glusterfs":
            line += f": the bricks' copies of the repaired file equal after {sum(equal)} of {len(equal)} round(s)"
        elif equal:
            line += f": replica equal to the primary store after {sum(equal)} of {len(equal)} round(s)"
        lines.append(line)
        lines += [f"  - problem: {problem}" for problem in c.get("problems", [])]
        lines += [f"  - log: {note} (×{count})" for note, count in sorted(c.get("log_notes", {}).items())]
    return "\n".join(lines) + "\n"


# --- files ------------------------------------------------------------------------------


def chart(summary: dict[str, Any], path: Path) -> None:
    """One bar chart per workload's main metric, targets side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, targets = summary["medians"], summary["targets"]
    shown = [w for w in WORKLOADS if any(w in m.get(t, {}) for t in targets)]
    cols = 3
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, workload in zip(axes.flat, shown, strict=False):
        spec = WORKLOADS[workload][1][MAIN_METRIC[workload]]
        names = [t for t in targets if value(m, t, workload, MAIN_METRIC[workload]) is not None]
        bars = ax.bar(names, [value(m, t, workload, MAIN_METRIC[workload]) for t in names],
                      color=["#4c72b0" if t.startswith("fsrep") else "#999999" for t in names])
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(f"{workload}: {spec.title} ({spec.unit}, {'higher' if spec.higher_is_better else 'lower'}"
                     " is better)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.set_visible(False)
    fig.suptitle(f"fsrep benchmark, {summary['date']}, medians of {summary['parameters']['rounds']} round(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(summary: dict[str, Any], out: Path) -> list[Path]:
    """report.md, report.json and report.png in *out*."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.md", out / "report.json", out / "report.png"]
    paths[0].write_text(markdown(summary), encoding="utf-8")
    paths[1].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    chart(summary, paths[2])
    return paths
