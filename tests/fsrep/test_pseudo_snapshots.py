"""Pseudo snapshots on a real mount (fsrep/_snapshots.py, the replica's
side, the resync from one): taken while clients write, listed and retired
on both sides, kept across restarts, refused without a common
point, taken on a schedule — and the resync that starts from one when the
dirty set is gone moves what changed since it, not the whole tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import tracking
from tests.conftest import (
    ACKS_STOPPED,
    LINK_CLOSED,
    SESSION_CLOSED,
    UNCLEAN_SHUTDOWN,
    Cluster,
    fsrep_resync,
    run_fsrep,
    wait_for,
    write_random,
)

KiB = 1024
MiB = 1024 * KiB
REGION = 4 * KiB
EXTENT = tracking.EXTENT_SIZE
NOTICE_DEADLINE = 10.0
RECONNECT_DEADLINE = 30.0
SNAPSHOTS_UNUSABLE = r" WARNING \S+: group \S+: the snapshots file is unusable "
NO_SCHEDULE = ("--snapshot-interval", "0")

WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
i = 0
while True:
    os.pwrite(fd, os.urandom(4096), (i * 7919 % 512) * 4096)
    if i % 16 == 0:
        os.fsync(fd)
    i += 1
"""


def snapshot(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_fsrep("snapshot", str(cluster.mnt), *args, check=check)


def listed(cluster: Cluster) -> list[dict]:
    (group,) = json.loads(snapshot(cluster, "list", "--json").stdout)["groups"]
    return group["snapshots"]


def _kill_primary(cluster: Cluster) -> None:
    cluster.kill_primary()
    subprocess.run(["fusermount3", "-u", "-z", str(cluster.mnt)], check=True)
    cluster.mounted = False


def _group_file(cluster: Cluster, suffix: str) -> Path:
    (path,) = (cluster.primary_store / ".fsrep" / "groups").glob(f"*{suffix}")
    return path


def test_a_snapshot_is_taken_listed_shown_and_deleted_on_both_sides(cluster: Cluster) -> None:
    cluster.mount(*NO_SCHEDULE)
    write_random(cluster.mnt / "f", 1)
    taken = snapshot(cluster, "create", "--name", "before-upgrade")
    assert "took snapshot before-upgrade at seq" in taken.stdout
    (entry,) = listed(cluster)
    assert (entry["name"], entry["auto"], entry["common"]) == ("before-upgrade", False, True)
    status = cluster.status()
    assert status["snapshot"]["name"] == "before-upgrade"
    assert status["snapshot"]["seq"] == entry["seq"] <= status["last_acked_seq"]
    table = run_fsrep("status", str(cluster.mnt)).stdout
    assert "newest common snapshot: before-upgrade" in table
    assert "before-upgrade" in snapshot(cluster, "list").stdout
    again = snapshot(cluster, "create", "--name", "before-upgrade", check=False)
    assert again.returncode == 1
    assert "has a snapshot named before-upgrade already" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    snapshot(cluster, "delete", "before-upgrade")
    assert listed(cluster) == []
    cluster.umount()
    cluster.mount(*NO_SCHEDULE)  # the replica retired it too: nothing common is left to report
    assert cluster.status()["snapshot"] is None
    cluster.assert_replicated()


def test_a_save_appends_what_changed_and_leaves_the_record_of_a_snapshot_in_place(mounted: Cluster) -> None:
    write_random(mounted.mnt / "f", 1)
    snapshot(mounted, "create", "--name", "s1")
    base = _group_file(mounted, ".snapshots")
    wait_for(lambda: mounted.status()["snapshot"] is not None and base.exists(), "the snapshot saved")
    before = base.stat()
    journal = base.with_name(base.name + ".journal")
    with open(mounted.mnt / "f", "r+b") as f:
        for i in range(3):
            os.pwrite(f.fileno(), os.urandom(REGION), i * 7 * REGION)
            os.fsync(f.fileno())
            wait_for(lambda n=i: journal.exists() and journal.read_bytes().count(b"\n") > n, "an appended record")
    after = base.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the base was written again"
    assert _saved_changes(mounted, "s1") == 3 * REGION
    mounted.assert_replicated()


def test_snapshots_and_what_changed_since_survive_restarts_of_both_daemons(cluster: Cluster) -> None:
    cluster.mount(*NO_SCHEDULE)
    write_random(cluster.mnt / "f", 2)
    snapshot(cluster, "create", "--name", "s1")
    with open(cluster.mnt / "f", "r+b") as f:
        os.pwrite(f.fileno(), os.urandom(REGION), 5 * REGION)
    cluster.umount()
    cluster.secondary.stop()
    cluster.secondary.start()
    cluster.mount(*NO_SCHEDULE)
    (entry,) = listed(cluster)
    assert entry["name"] == "s1"
    assert entry["common"], "the replica no longer reports the snapshot after its restart"
    assert entry["changed_bytes"] == REGION
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_taking_a_snapshot_without_a_common_point_is_refused_and_leaving_in_sync_adds_one(proxied: Cluster) -> None:
    proxied.mount(*NO_SCHEDULE)
    (proxied.mnt / "f").write_bytes(b"x" * REGION)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    refused = snapshot(proxied, "create", check=False)
    assert refused.returncode == 1
    assert "is OutOfSync" in refused.stderr
    assert "a common point needs both sides in sync" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    (point,) = listed(proxied)
    assert point["auto"], point
    assert point["name"].startswith("auto-")
    assert point["seq"] <= proxied.status()["last_acked_seq"]
    assert proxied.status()["snapshot"]["name"] == point["name"]
    proxied.proxy.restore()
    proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    snapshot(proxied, "create", "--name", "later")
    assert [s["name"] for s in listed(proxied)] == ["later"], "a taken snapshot retires the automatic point"
    proxied.assert_replicated()


@pytest.mark.expect_log(ACKS_STOPPED, SESSION_CLOSED)
def test_a_link_lost_while_a_snapshot_is_taken_fails_it_in_one_line_and_the_name_is_free_again(
        proxied: Cluster) -> None:
    proxied.mount("--ack-timeout", "1", *NO_SCHEDULE)
    (proxied.mnt / "f").write_bytes(b"x" * REGION)
    proxied.proxy.stall()  # the Snapshot frame is sent and never acknowledged
    failed = snapshot(proxied, "create", "--name", "s1", check=False)
    assert failed.returncode == 1
    assert "the link to the secondary was lost while the snapshot was taken" in failed.stderr
    assert "nothing was taken" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert [s["auto"] for s in listed(proxied)] == [True], "only the automatic point of leaving InSync"
    proxied.proxy.restore()  # the held frames reach the replica: it took s1 there, alone
    proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    snapshot(proxied, "create", "--name", "s1")
    (entry,) = listed(proxied)
    assert (entry["name"], entry["common"]) == ("s1", True)
    proxied.umount()
    proxied.mount("--ack-timeout", "1", *NO_SCHEDULE)
    assert [s["name"] for s in listed(proxied)] == ["s1"]
    assert proxied.status()["snapshot"]["seq"] == entry["seq"], "the replica kept the first s1, not the second"
    proxied.assert_replicated()


def test_the_schedule_takes_snapshots_and_keeps_the_newest(cluster: Cluster) -> None:
    cluster.mount("--snapshot-interval", "0.5", "--snapshot-keep", "2")
    (cluster.mnt / "f").write_bytes(b"data")
    snapshot(cluster, "create", "--name", "mine")
    wait_for(lambda: "retired snapshot sched-" in cluster.primary_log(), "the schedule to retire one", timeout=30)
    names = [s["name"] for s in listed(cluster)]
    assert "mine" in names, "the schedule retired a snapshot it did not take"
    scheduled = [n for n in names if n.startswith("sched-")]
    assert 1 <= len(scheduled) <= 2, names
    cluster.assert_replicated()


@pytest.mark.expect_log(SNAPSHOTS_UNUSABLE)
def test_a_damaged_snapshots_file_is_set_aside_with_one_line(cluster: Cluster) -> None:
    cluster.mount(*NO_SCHEDULE)
    (cluster.mnt / "f").write_bytes(b"data")
    snapshot(cluster, "create", "--name", "s1")
    cluster.umount()
    damaged = _group_file(cluster, ".snapshots")
    damaged.write_bytes(damaged.read_bytes()[:40])
    cluster.mount(*NO_SCHEDULE)
    assert cluster.status()["snapshot"] is None
    assert listed(cluster) == []
    assert damaged.with_name(damaged.name + ".bad").exists()
    (line,) = [line for line in cluster.primary_log().splitlines() if "snapshots file is unusable" in line]
    assert "no common snapshot until the next one is taken" in line
    snapshot(cluster, "create", "--name", "s2")  # and the group takes new ones
    cluster.assert_replicated()


def _snapshots_in_a_loop(cluster: Cluster, count: int, failures: list[str]) -> None:
    for i in range(count):
        done = snapshot(cluster, "create", "--name", f"loop-{i}", check=False)
        if done.returncode:
            failures.append(done.stderr)


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED, UNCLEAN_SHUTDOWN)
@pytest.mark.parametrize("lost", ["dirty set", "dirty set and activity log"])
def test_a_resync_after_a_crash_that_lost_the_dirty_set_starts_from_the_snapshot(proxied: Cluster, lost: str) -> None:
    proxied.mount(*NO_SCHEDULE)
    big = proxied.mnt / "big"
    write_random(big, 32)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(proxied.mnt / f"w{i}")]) for i in range(3)]
    failures: list[str] = []
    try:
        looping = threading.Thread(target=_snapshots_in_a_loop, args=(proxied, 8, failures))
        looping.start()
        looping.join(timeout=120)
        assert not looping.is_alive(), "taking snapshots hung"
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert not failures, failures
    taken = listed(proxied)
    assert [s["name"] for s in taken] == [f"loop-{i}" for i in range(8)]
    assert all(s["common"] for s in taken)
    proxied.umount()  # a clean restart: the activity log starts empty, the snapshots stay
    proxied.mount(*NO_SCHEDULE)
    assert listed(proxied)[-1]["common"]
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    offsets = [EXTENT + (i * 37 % 1024) * REGION for i in range(40)]  # 40 regions, in one extent of the file
    with open(big, "r+b") as f:
        for offset in offsets:
            os.pwrite(f.fileno(), os.urandom(REGION), offset)
    changed = len(set(offsets)) * REGION
    (point,) = [s for s in listed(proxied) if s["auto"]]
    wait_for(lambda: _saved_changes(proxied, point["name"]) >= changed, "the changes since the point saved")
    _kill_primary(proxied)
    _group_file(proxied, ".dirty").unlink(missing_ok=True)
    if lost == "dirty set and activity log":
        for log in (proxied.primary_store / ".fsrep" / "groups").glob("*.activity.*"):
            log.unlink()
    proxied.proxy.restore()
    proxied.mount(*NO_SCHEDULE)
    status = proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    log = proxied.primary_log()
    assert f"resync from snapshot {point['name']}" in log
    assert "checksum resync" not in log.split("did not shut down cleanly")[-1]
    sent = status["resync_bytes_sent"]
    if lost == "dirty set":  # what changed, and the extent the activity log held active at the crash
        assert changed <= sent <= EXTENT, status
    else:
        assert changed <= sent <= 1.1 * changed, status
    proxied.assert_replicated()


def _saved_changes(cluster: Cluster, name: str) -> int:
    """Bytes the primary's saved snapshots file records as changed since *name*."""
    try:
        payload, records = tracking.JournaledState(_group_file(cluster, ".snapshots"), tracking.SNAPSHOTS_KIND).load()
    except tracking.StateError:
        return 0
    chain = tracking.SnapshotChain.from_payload(payload, tracking.DirtySet, tracking.DirtySet.from_payload)
    for record in records:
        chain.delta(record["snapshot"]).merge(tracking.DirtySet.from_payload(record["changes"]))
    return chain.since(name).dirty_bytes if chain.find(name) is not None else 0


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_resync_mode_snapshot_moves_what_changed_since_the_snapshot_named(proxied: Cluster) -> None:
    proxied.mount(*NO_SCHEDULE)
    big = proxied.mnt / "big"
    write_random(big, 16)
    snapshot(proxied, "create", "--name", "s1")
    with open(big, "r+b") as f:
        for i in range(10):
            os.pwrite(f.fileno(), os.urandom(REGION), i * 101 * REGION)
    before = proxied.status()["resync_bytes_sent"]
    done = fsrep_resync(str(proxied.mnt), "--mode", "snapshot", "--snapshot", "s1", "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert (outcome["mode"], outcome["snapshot"], outcome["state"]) == ("snapshot", "s1", "InSync")
    assert proxied.status()["resync_bytes_sent"] - before == 10 * REGION
    unknown = fsrep_resync(str(proxied.mnt), "--mode", "snapshot", "--snapshot", "nope")
    assert unknown.returncode == 1
    assert "no common snapshot named nope" in unknown.stderr
    proxied.assert_replicated()


@pytest.mark.parametrize("argv", [["snapshot", "/mnt/x", "create", "--name", "bad name"],
                                  ["snapshot", "/mnt/x", "delete", "a/b"]])
def test_a_bad_snapshot_name_is_a_usage_error_in_one_line(argv: list[str]) -> None:
    done = run_fsrep(*argv, check=False)
    assert done.returncode == 2
    assert "is not 1 to 64 letters, digits" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_fsrep_resync_refuses_a_bad_snapshot_name_or_one_without_its_mode() -> None:
    bad = fsrep_resync("/mnt/x", "--mode", "snapshot", "--snapshot", "x/y")
    assert bad.returncode == 2
    assert "is not 1 to 64 letters" in bad.stderr
    alone = fsrep_resync("/mnt/x", "--snapshot", "s1")
    assert alone.returncode == 2
    assert "--snapshot goes with --mode snapshot" in alone.stderr
