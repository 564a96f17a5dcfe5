"""The benchmark harness (bench/run.py) runs end to end in its smoke mode,
so it cannot rot between the rare full runs: real mounts, a real secondary
over loopback and over the namespaces' delay line, fio (installed by the
harness when missing), every workload, bench/snapshot.py's quick mode, and
the report files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SMOKE_TIMEOUT = 240  # the run itself takes about 80 s; installing fio or matplotlib first takes longer
TARGETS = ["raw", "fsrep-alone", "fsrep-loopback", "fsrep-1ms", "rsync"]
LOCAL = ["seq_write", "seq_read", "write_fsync", "random_jobs", "files", "real"]
EXPECTED = {  # target: workloads with their metrics, as the smoke run must report them
    "raw": LOCAL, "fsrep-alone": LOCAL, "fsrep-loopback": [*LOCAL, "repair"], "fsrep-1ms": [*LOCAL, "repair"],
    "rsync": ["repair"],
}
METRICS = {"seq_write": ["MB_s"], "seq_read": ["MB_s"], "write_fsync": ["p50_us", "p99_us"], "random_jobs": ["IOPS"],
           "files": ["create_per_s", "delete_per_s"], "real": ["unpack_s", "sqlite_s", "total_s"],
           "repair": ["seconds"]}


def test_smoke_run_reports_every_target_and_workload_with_equal_replicas(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--no-glusterfs",
                           "--out", str(out), "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT, cwd=REPO)
    assert done.returncode == 0, f"bench/run.py --smoke failed:\n{done.stderr[-3000:]}"
    for name in ("report.md", "report.json", "report.png"):
        assert (out / name).stat().st_size > 0, f"{name} is empty"
    report = json.loads((out / "report.json").read_text())
    assert report["targets"] == TARGETS
    markdown = (out / "report.md").read_text()
    for target, workloads in EXPECTED.items():
        assert sorted(report["medians"][target]) == sorted(workloads), target
        for workload in workloads:
            for metric in METRICS[workload]:
                number = report["medians"][target][workload][metric]
                what = f"{target} {workload} {metric}: {number!r}"
                assert isinstance(number, float | int), what
                assert math.isfinite(number), what
                assert number > 0, what
        assert f"| {target} |" in markdown
    for target in ("fsrep-loopback", "fsrep-1ms"):
        assert report["checks"][target]["replica_equal"] == [True], f"{target}: {report['checks'][target]}"
        assert report["checks"][target]["problems"] == [], target
    snapshots = report["snapshots"]
    assert snapshots["problems"] == [], snapshots["problems"]
    for kind in ("without", "with", "cli"):
        assert snapshots["latency"][kind]["ops"] > 0, kind
    assert snapshots["snapshot_ms"]["daemon"]["calls"] == snapshots["parameters"]["seconds"] + \
        snapshots["parameters"]["cli_calls"]
    for mode in ("snapshot", "checksum"):
        assert snapshots["resync"][mode]["replica_equal"], snapshots["resync"][mode]
    assert snapshots["resync"]["snapshot"]["run_bytes"] >= snapshots["resync"]["changed_bytes"]
    assert "## Pseudo snapshots" in markdown
    assert not list(tmp_path.glob("fsrep-bench-*")), "the work directory was left behind"
