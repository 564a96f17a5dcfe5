"""The workloads of ``bench/run.py``. Each takes the directory to run in (a
raw directory, an fsrep mount, a GlusterFS mount) and returns its figures
as ``{metric: value}``; it leaves its data in place (the harness compares
the replica with the primary store afterwards) except where deleting is
the workload.

fio does the block I/O where it reports what is asked for; the 4 KiB
write+fsync latency is timed here per pair, since fio reports the write's
and the fsync's latencies as separate distributions, and percentiles of two
distributions do not add up to a percentile of their sum.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import BenchError

MiB = 1024 * 1024
REGION = 4096
FIO_TIMEOUT = 900.0


@dataclass(frozen=True)
class Sizes:
    """How big each workload is; ``smoke()`` is the one the test suite runs."""

    seq_mib: int = 1024  # sequential write and read, and the file of the repair
    latency_file_mib: int = 64
    latency_ops: int = 2000
    jobs_file_mib: int = 64  # per fio job
    jobs_seconds: int = 10
    files: int = 5000
    tarball_mib: int = 60
    transactions: int = 2000
    repair_percent: float = 1.0

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(seq_mib=8, latency_file_mib=4, latency_ops=50, jobs_file_mib=2, jobs_seconds=1, files=50,
                   tarball_mib=1, transactions=20)

    def with_seq(self, mib: int) -> Sizes:
        """These sizes with a sequential file of *mib* MiB; the latency and
        per-job files shrink with it so a small run stays small."""
        return Sizes(**{**self.__dict__, "seq_mib": mib, "latency_file_mib": min(self.latency_file_mib, mib),
                        "jobs_file_mib": max(1, min(self.jobs_file_mib, mib // 4))})


# --- fio ------------------------------------------------------------------------------


def fio(*options: str) -> dict[str, Any]:
    """Run fio with *options*; the JSON of its only (grouped) job."""
    argv = ["fio", "--output-format=json", "--ioengine=psync", "--fallocate=none", "--group_reporting", *options]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=FIO_TIMEOUT)
    except BaseException as exc:  # a timeout or an interrupt: fio's job processes go too, or the mount stays busy
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"fio {' '.join(options)} did not finish in {FIO_TIMEOUT:g}s") from None
        raise
    if proc.returncode != 0:
        raise BenchError(f"fio {' '.join(options)}: exit {proc.returncode}: {err.strip()[-300:]}")
    return json.loads(out[out.index("{"):])["jobs"][0]


def seq_write(root: Path, sizes: Sizes) -> dict[str, float]:
    """1 MiB sequential writes, one fsync at the end (fio's runtime includes
    it: end_fsync). The file stays for ``seq_read``."""
    job = fio("--name=seqwrite", f"--filename={root / 'seq'}", "--rw=write", "--bs=1M",
              f"--size={sizes.seq_mib}M", "--end_fsync=1")
    return {"MB_s": job["write"]["bw_bytes"] / 1e6}


def drop_caches() -> None:
    """Write everything back, then drop the page cache, dentries and inodes,
    so the read comes from the disk (or the peer)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def seq_read(root: Path, sizes: Sizes) -> dict[str, float]:
    """1 MiB sequential reads of the file ``seq_write`` left, cold cache."""
    drop_caches()
    job = fio("--name=seqread", f"--filename={root / 'seq'}", "--rw=read", "--bs=1M", f"--size={sizes.seq_mib}M")
    return {"MB_s": job["read"]["bw_bytes"] / 1e6}


def random_jobs(root: Path, sizes: Sizes) -> dict[str, float]:
    """4 jobs of 4 KiB random writes, each with an fsync every 32 writes,
    for a fixed time: IOPS of all jobs together."""
    directory = root / "jobs"
    directory.mkdir()
    job = fio("--name=randjobs", f"--directory={directory}", "--rw=randwrite", "--bs=4k", "--numjobs=4",
              "--fsync=32", f"--size={sizes.jobs_file_mib}M", "--time_based", f"--runtime={sizes.jobs_seconds}")
    return {"IOPS": job["write"]["iops"]}


# --- timed here ----------------------------------------------------------------------------


def fill(path: Path, mib: int, fsync: bool = True) -> None:
    """A file of *mib* MiB of random bytes."""
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        if fsync:
            os.fsync(f.fileno())


def write_fsync_latency(root: Path, sizes: Sizes) -> dict[str, float]:
    """p50 and p99 microseconds of one 4 KiB pwrite plus its fsync, at
    random aligned offsets of an existing file, one writer."""
    path = root / "latency"
    fill(path, sizes.latency_file_mib)
    rng = random.Random(5)
    regions = sizes.latency_file_mib * MiB // REGION
    data = os.urandom(REGION)
    samples = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for _ in range(sizes.latency_ops):
            offset = rng.randrange(regions) * REGION
            start = time.perf_counter()
            os.pwrite(fd, data, offset)
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1e6)
    finally:
        os.close(fd)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_us": statistics.median(samples), "p99_us": cuts[98]}


def create_delete(root: Path, sizes: Sizes) -> dict[str, float]:
    """Files per second creating *files* files of 4 KiB in one directory
    (open O_CREAT|O_EXCL, write, close), then deleting them."""
    directory = root / "files"
    directory.mkdir()
    data = os.urandom(REGION)
    names = [directory / f"f{i:06d}" for i in range(sizes.files)]
    start = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    created = time.perf_counter()
    for name in names:
        os.unlink(name)
    deleted = time.perf_counter()
    return {"create_per_s": sizes.files / (created - start), "delete_per_s": sizes.files / (deleted - created)}


def make_tarball(source: Path, target: Path, mib: int) -> dict[str, int]:
    """A tarball of the first files of *source* (in name order) that add up
    to about *mib* MiB: the same tree every run on this machine."""
    budget, total, files = mib * MiB, 0, 0
    with tarfile.open(target, "w") as tar:
        for path in sorted(source.rglob("*")):
            if total >= budget:
                break
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
            if path.is_file():
                total += path.stat().st_size
                files += 1
    return {"bytes": total, "files": files}


def unpack_and_sqlite(root: Path, sizes: Sizes, tarball: Path) -> dict[str, float]:
    """Seconds to unpack *tarball* with tar, then to build an SQLite
    database with *transactions* small transactions (one INSERT and a
    COMMIT each, default journal and synchronous=FULL)."""
    directory = root / "real"
    directory.mkdir()
    start = time.perf_counter()
    done = subprocess.run(["tar", "-xf", str(tarball), "-C", str(directory)], capture_output=True, text=True,
                          timeout=FIO_TIMEOUT)
    if done.returncode != 0:
        raise BenchError(f"tar -xf {tarball} -C {directory}: {done.stderr.strip()[-300:]}")
    unpacked = time.perf_counter()
    db = sqlite3.connect(directory / "bench.sqlite")
    try:
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, payload BLOB)")
        db.commit()
        for i in range(sizes.transactions):
            db.execute("INSERT INTO item (name, payload) VALUES (?, ?)", (f"item {i}", os.urandom(200)))
            db.commit()
    finally:
        db.close()
    built = time.perf_counter()
    return {"unpack_s": unpacked - start, "sqlite_s": built - unpacked, "total_s": built - start}


# --- repair after an outage -------------------------------------------------------------


def repair_regions(sizes: Sizes) -> list[int]:
    """Which 4 KiB regions of the repair file are rewritten (the same in
    every round and on every target)."""
    count = sizes.seq_mib * MiB // REGION
    return sorted(random.Random(7).sample(range(count), max(1, int(count * sizes.repair_percent / 100))))


def rewrite(path: Path, regions: list[int]) -> None:
    """New random bytes in *regions* of *path*, then fsync."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for region in regions:
            os.pwrite(fd, os.urandom(REGION), region * REGION)
        os.fsync(fd)
    finally:
        os.close(fd)
