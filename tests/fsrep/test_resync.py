"""Quick resync: after a link cut only what changed crosses the link, while
clients keep writing; and the trees end identical."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fsrep
from fsrep._cli import _notes as status_notes
from tests.conftest import (
    HARD_LINK_FALLBACK,
    LINK_CLOSED,
    SESSION_CLOSED,
    Cluster,
    deep_chain,
    fsrep_resync,
    run_fsrep,
    wait_for,
    write_random,
)

MiB = 1024 * 1024


@pytest.mark.expect_log(LINK_CLOSED)
def test_quick_resync_sends_about_the_changed_regions(cluster: Cluster) -> None:
    cluster.mount()
    big = cluster.mnt / "disk.img"
    write_random(big, 64)
    cluster.secondary.stop()  # kill -9 would lose its position: a full resync
    rng = random.Random(4)
    offsets = sorted(rng.sample(range(64 * MiB // 4096), 40))
    with open(big, "r+b") as f:
        for region in offsets:
            f.seek(region * 4096)
            f.write(os.urandom(4096))
    status = cluster.wait_state("OutOfSync")
    assert status["dirty_bytes"] == 40 * 4096
    cluster.secondary.start()
    status = cluster.wait_state("InSync")
    assert 40 * 4096 <= status["resync_bytes_sent"] <= 1.1 * 40 * 4096, status
    assert "quick resync complete" in cluster.primary_log()
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED, HARD_LINK_FALLBACK)
def test_namespace_changes_while_out_of_sync(cluster: Cluster) -> None:
    cluster.mount()
    m = cluster.mnt
    (m / "keep" / "deep").mkdir(parents=True)
    (m / "keep" / "deep" / "f").write_bytes(os.urandom(100000))
    (m / "old-dir").mkdir()
    (m / "old-dir" / "inner").write_text("inner")
    (m / "doomed").mkdir()
    (m / "doomed" / "x").write_text("x")
    (m / "replace-me").write_text("old")
    (m / "chmod-me").write_text("c")
    cluster.secondary.stop()  # kill -9 would lose its position: a full resync
    (m / "old-dir").rename(m / "keep" / "new-dir")
    (m / "doomed" / "x").unlink()
    (m / "doomed").rmdir()
    (m / "tmp").write_text("new contents")
    os.rename(m / "tmp", m / "replace-me")
    os.chmod(m / "chmod-me", 0o600)
    os.setxattr(m / "chmod-me", "user.k", b"v")
    (m / "fresh" / "sub").mkdir(parents=True)
    (m / "fresh" / "sub" / "file").write_bytes(os.urandom(5000))
    os.link(m / "fresh" / "sub" / "file", m / "fresh" / "hardlink")
    os.symlink("fresh/sub/file", m / "link")
    os.mkfifo(m / "fifo")
    with open(m / "keep" / "deep" / "f", "r+b") as f:
        f.truncate(50000)
        f.seek(70000)
        f.write(b"beyond")
    cluster.wait_state("OutOfSync")
    cluster.secondary.start()
    cluster.wait_state("InSync")
    cluster.assert_replicated()


HAMMER = """
import os, sys, random, time
path, seed, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(seed)
fd = os.open(path, os.O_WRONLY)
deadline = time.monotonic() + seconds
n = 0
while time.monotonic() < deadline:
    region = rng.randrange(0, 512)
    os.pwrite(fd, os.urandom(rng.choice([100, 4096, 10000])), region * 4096 + rng.randrange(0, 4096))
    n += 1
os.close(fd)
print(n)
"""


@pytest.mark.expect_log(LINK_CLOSED)
def test_writers_hammering_the_same_regions_during_resync_lose_nothing(cluster: Cluster) -> None:
    cluster.mount()
    target = cluster.mnt / "hot"
    target.write_bytes(os.urandom(2 * MiB))
    cluster.secondary.stop()  # kill -9 would lose its position: a full resync
    with open(target, "r+b") as f:  # make most regions dirty, so the resync has work to race with
        for region in range(0, 512, 2):
            f.seek(region * 4096)
            f.write(os.urandom(4096))
    cluster.wait_state("OutOfSync")
    writers = [subprocess.Popen([sys.executable, "-c", HAMMER, str(target), str(seed), "4"], stdout=subprocess.PIPE)
               for seed in range(3)]
    try:
        cluster.secondary.start()
        counts = [int(w.communicate(timeout=120)[0]) for w in writers]
    finally:
        for w in writers:
            w.kill()
    assert all(c > 0 for c in counts)
    wait_for(lambda: cluster.status()["state"] == "InSync", "InSync after the writers stopped", timeout=60)
    log = cluster.primary_log()
    assert "Resyncing" in log
    assert "quick resync" in log
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED)
def test_kill_of_the_secondary_after_a_checkpoint_resyncs_only_what_it_lost(cluster: Cluster) -> None:
    cluster.mount()
    big = cluster.mnt / "big"
    write_random(big, 32)
    position = cluster.status()["last_acked_seq"]
    # The secondary saves its position every 2 s; once it has, a kill loses only what came after.
    wait_for(lambda: _durable_position(cluster) >= position, "the secondary's checkpoint", timeout=30)
    with open(big, "r+b") as f:
        for region in range(0, 64, 8):
            f.seek(region * 4096)
            f.write(os.urandom(4096))
    cluster.secondary.stop(signal.SIGKILL)
    cluster.secondary.start()
    status = cluster.wait_state("InSync")
    assert "lost changes after seq" in cluster.primary_log()
    assert status["resync_bytes_sent"] <= 1024 * 1024, "more than the lost changes crossed the link"
    cluster.assert_replicated()


def _durable_position(cluster: Cluster) -> int:
    states = list((cluster.secondary.store / ".fsrep" / "replicas").glob("*.json"))
    return json.loads(states[0].read_text())["payload"]["last_seq"] if states else 0


def test_baseline_of_an_existing_tree_while_it_is_written(cluster: Cluster) -> None:
    store = cluster.primary_store
    rng = random.Random(7)
    for d in range(8):
        (store / f"vm{d}" / "etc").mkdir(parents=True)
        (store / f"vm{d}" / "disk.img").write_bytes(rng.randbytes(2 * MiB))
        for i in range(20):
            (store / f"vm{d}" / "etc" / f"conf{i}").write_text(f"setting {i}\n" * (i + 1))
        os.symlink("disk.img", store / f"vm{d}" / "current")
    with open(store / "sparse", "wb") as f:
        f.seek(40 * MiB)
        f.write(b"end")
    cluster.mount()  # serves at once: the baseline runs behind, clients keep writing
    for round_ in range(30):  # bounded: writes land before, during and after the baseline's copy
        d = round_ % 8
        with open(cluster.mnt / f"vm{d}" / "disk.img", "r+b") as f:
            f.seek(rng.randrange(0, 2 * MiB - 4096))
            f.write(rng.randbytes(4096))
        (cluster.mnt / f"vm{d}" / "etc" / f"new{round_}").write_text("written during the baseline")
        if round_ == 10:
            os.rename(cluster.mnt / "vm1" / "etc", cluster.mnt / "vm1" / "etc.old")
            (cluster.mnt / "vm1" / "etc").mkdir()
        if round_ == 20:
            (cluster.mnt / "vm2" / "etc" / "conf3").unlink()
    cluster.wait_state("InSync", timeout=60)
    log = cluster.primary_log()
    assert "checksum resync of the whole tree" in log
    assert "full resync" not in log
    cluster.assert_replicated()
    assert os.stat(cluster.secondary.replica_root() / "sparse").st_blocks < 1024, "the sparse file was filled"


@pytest.mark.expect_log(LINK_CLOSED)
def test_extended_attributes_removed_while_out_of_sync_are_removed_on_the_replica(cluster: Cluster) -> None:
    cluster.mount()
    f = cluster.mnt / "f"
    f.write_text("x")
    os.setxattr(f, "user.gone", b"1")
    os.setxattr(f, "user.kept", b"2")
    cluster.secondary.stop()
    os.removexattr(f, "user.gone")
    os.setxattr(f, "user.kept", b"changed")
    cluster.wait_state("OutOfSync")
    cluster.secondary.start()
    cluster.wait_state("InSync")
    replica = cluster.secondary.replica_root() / "f"
    assert os.listxattr(replica) == ["user.kept"]
    assert os.getxattr(replica, "user.kept") == b"changed"
    cluster.assert_replicated()


def _tree_of_directories(top: Path, count: int, fanout: int) -> int:
    """*count* directories, *fanout* to a parent, each with a file; returns
    how many entries they and *top* hold."""
    top.mkdir()
    made = [top]
    for i in range(count):
        d = made[i // fanout] / f"d{i}"
        d.mkdir()
        (d / "f").write_bytes(b"%d" % i)
        made.append(d)
    return count + count  # each directory is an entry of its parent and holds one file


def test_the_directory_phase_shows_directories_and_compares_each_once(cluster: Cluster) -> None:
    store = cluster.primary_store
    entries = _tree_of_directories(store / "wide", 300, fanout=20) + 1  # and "wide" itself, in the root
    levels = 800
    deep_chain(store, levels, name="c")  # each level one round trip: a directory phase long enough to watch
    directories = 1 + 1 + 300 + levels  # the root, "wide", its tree, the chain
    entries += levels + 1  # each chain level is an entry of the one above; the file at the bottom
    cluster.mount()
    seen: list[dict] = []
    lines: list[str] = []
    first: list[dict] = []

    def in_directory_phase() -> bool:
        group = cluster.status()
        run = group.get("resync") or {}
        if run.get("running") and run["directories_remaining"]:
            seen.append(run)
            first[:] = first or [group]
            if not lines:  # and once as the operator reads it
                text = run_fsrep("status", str(cluster.mnt)).stdout
                lines.extend(x for x in text.splitlines() if "directories compared" in x)
        return group["state"] == "InSync"

    wait_for(in_directory_phase, "InSync", timeout=300, step=0.1)
    assert seen, "never saw the directory phase in status"
    if not lines:  # under load the phase can end between the two calls: the table's text of what JSON showed
        lines = [x for x in status_notes(fsrep.GroupStatus.from_json(first[0])) if "directories compared" in x]
    assert lines, "status never printed the directories compared"
    assert "left" in lines[0], lines
    assert "ETA 0s" not in lines[0], lines
    assert all(run["eta_seconds"] != 0.0 and run["percent"] < 100.0 for run in seen), seen
    assert [run["directories_checked"] for run in seen] == sorted(run["directories_checked"] for run in seen)
    done = cluster.status()["resync"]
    assert done["directories_checked"] == directories, done
    assert done["entries_checked"] == entries, done
    done = fsrep_resync(str(cluster.mnt), "--mode", "checksum", "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    run = cluster.status()["resync"]
    assert run["mode"] == "checksum"
    assert run["outcome"] == "InSync"
    assert run["directories_checked"] == directories, run
    cluster.assert_replicated()


def test_a_large_directory_changed_while_it_is_compared_ends_identical(cluster: Cluster) -> None:
    big = cluster.primary_store / "big"
    big.mkdir()
    for i in range(3000):  # several steps' worth of entries: clients get in between them
        (big / f"e{i:05d}").write_bytes(b"%d" % i)
    cluster.mount()
    mine = cluster.mnt / "big"
    for i in range(200):  # bounded: changes land before, during and after the comparison of "big"
        (mine / f"new{i}").write_bytes(b"new")
        (mine / f"e{i * 7:05d}").unlink()
        os.rename(mine / f"e{i * 7 + 1:05d}", mine / f"moved{i}")
    cluster.wait_state("InSync", timeout=120)
    cluster.assert_replicated()
