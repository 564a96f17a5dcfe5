"""``fsrep-resync`` on real mounts: it starts or joins a resync, follows it
to the end, and exits 0 only when the group is InSync (and, for checksum,
verified). Divergence that tracking cannot know about — bytes changed
behind fsrep's back on the replica — is what checksum mode is for."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from fsrep._control import request
from tests.conftest import LINK_CLOSED, LINK_LOST, SESSION_CLOSED, Cluster, fsrep_resync, run_fsrep, wait_for

STALLED = (r" WARNING \S+: group \S+: the checksum resync made no progress for 1s; restarting it on a new session$",
           LINK_LOST + r"the resync made no progress for 1s$",
           r" WARNING \S+: group \S+: resync failed: resync interrupted: the resync made no progress for 1s$")

MiB = 1024 * 1024


def _corrupt(path: Path, offsets: list[int]) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in offsets:
            os.pwrite(fd, b"\xff" * 100, offset)
    finally:
        os.close(fd)


def test_quick_on_an_in_sync_group_has_nothing_to_do(mounted: Cluster) -> None:
    (mounted.mnt / "f").write_bytes(b"data")
    done = fsrep_resync(str(mounted.mnt), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["state"] == "InSync"
    assert result["outcome"] == "InSync"
    assert result["percent"] == 100.0
    mounted.assert_replicated()


def test_checksum_finds_and_repairs_what_tracking_cannot_know(mounted: Cluster) -> None:
    big = mounted.mnt / "big"
    big.write_bytes(os.urandom(8 * MiB))
    (mounted.mnt / "d").mkdir()
    (mounted.mnt / "d" / "small").write_bytes(b"small file\n" * 100)
    replica = mounted.secondary.replica_root()
    wait_for(lambda: (replica / "d" / "small").exists(), "the replica to have d/small")
    _corrupt(replica / "big", [0, 2 * MiB - 50, 3 * MiB + 10, 8 * MiB - 200])  # the second straddles two regions
    _corrupt(replica / "d" / "small", [5])
    done = fsrep_resync(str(mounted.mnt), "--mode", "checksum", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["verified"]
    assert result["state"] == "InSync"
    assert result["bytes_checked"] >= 8 * MiB + 1100
    assert result["bytes_mismatched"] == 6 * 4096
    assert result["bytes_copied"] <= 6 * 4096
    mounted.assert_replicated()


def test_full_recopies_everything(mounted: Cluster) -> None:
    (mounted.mnt / "a").write_bytes(os.urandom(3 * MiB))
    (mounted.mnt / "b").symlink_to("a")
    os.link(mounted.mnt / "a", mounted.mnt / "hard")
    _corrupt(mounted.secondary.replica_root() / "a", [MiB])
    done = fsrep_resync(str(mounted.mnt), "--mode", "full")
    assert done.returncode == 0, done.stderr
    assert "full resync" in done.stdout
    assert "InSync" in done.stdout
    status = mounted.status()
    assert status["resync"]["mode"] == "full"
    assert status["resync"]["bytes_copied"] >= 3 * MiB
    mounted.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED)
def test_progress_is_in_status_while_a_limited_resync_runs(cluster: Cluster) -> None:
    cluster.mount("--resync-rate-limit", "1M")
    f = cluster.mnt / "f"
    f.write_bytes(bytes(4 * MiB))
    cluster.secondary.stop(signal.SIGKILL)
    wait_for(lambda: not cluster.status()["connected"], "the link loss to be noticed")
    f.write_bytes(os.urandom(4 * MiB))
    done = fsrep_resync(str(cluster.mnt), timeout=30)
    assert done.returncode == 1  # nothing to resync with: a clear error, not a hang
    assert "unreachable" in done.stderr
    assert done.stderr.count("\n") == 1
    # At 1 MiB/s the automatic resync takes a few seconds: long enough to watch it in status.
    cluster.secondary.start()
    running = wait_for(lambda: (s := cluster.status())["state"] == "Resyncing" and s["resync"]["running"]
                       and s["resync"]["bytes_copied"] > 0 and s, "the resync to be under way")
    assert 0 < running["bytes_remaining"] < 4 * MiB
    assert 0 < running["percent"] < 100
    assert running["bytes_per_second"] > 0
    assert running["eta_seconds"] is not None
    joined = fsrep_resync(str(cluster.mnt), "--json")
    assert joined.returncode == 0, joined.stderr
    result = json.loads(joined.stdout)
    assert result["rate_limit"] == MiB
    assert result["id"] == running["resync"]["id"]
    assert result["bytes_copied"] == 4 * MiB
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED)
def test_a_run_cut_off_by_a_link_loss_is_superseded_by_the_stronger_run_queued(cluster: Cluster) -> None:
    cluster.mount("--resync-rate-limit", "1M")
    f = cluster.mnt / "f"
    f.write_bytes(bytes(4 * MiB))
    cluster.secondary.stop(signal.SIGKILL)
    wait_for(lambda: not cluster.status()["connected"], "the link loss to be noticed")
    f.write_bytes(os.urandom(4 * MiB))
    cluster.secondary.start()
    quick = wait_for(lambda: (s := cluster.status())["state"] == "Resyncing" and s["resync"]["running"]
                     and s["resync"], "the automatic quick resync to be under way")  # 4 s at 1 MiB/s
    reply = request(cluster.primary_store / ".fsrep", {"cmd": "resync", "mode": "checksum"})
    assert reply["mode"] == "checksum", reply
    assert reply["run"] != quick["id"], reply  # queued behind the quick run
    cluster.secondary.stop(signal.SIGKILL)
    status = wait_for(lambda: (s := cluster.status())["resync_recent"] and s, "the quick run to end")
    ended = {run["id"]: run for run in status["resync_recent"]}
    assert ended[quick["id"]]["outcome"] == f"superseded by run {reply['run']}", ended
    cluster.secondary.start()
    final = wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["resync"]["finished"] and s,
                     "the checksum run to finish")
    assert final["resync"]["id"] == reply["run"]
    assert final["resync"]["mode"] == "checksum"
    assert final["resync"]["verified"], final["resync"]
    cluster.assert_replicated()


@pytest.mark.expect_log(*STALLED, SESSION_CLOSED)
def test_a_resync_that_stalls_is_reported_and_restarted(cluster: Cluster) -> None:
    cluster.mount("--ack-timeout", "60", "--resync-stall-timeout", "1")
    (cluster.mnt / "f").write_bytes(os.urandom(MiB))
    cluster.secondary.proc.send_signal(signal.SIGSTOP)  # alive, connected, silent: only the watchdog can tell
    try:
        done = fsrep_resync(str(cluster.mnt), "--mode", "checksum")
        assert done.returncode == 1
        assert "resumes by itself" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        cluster.secondary.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: (s := cluster.status())["state"] == "InSync" and s["resync"]["finished"] and s,
             "the restarted resync to finish")
    status = cluster.status()
    assert status["resync"]["mode"] == "checksum"
    assert status["resync"]["restarts"] >= 1
    log = cluster.primary_log()
    assert "made no progress" in log
    cluster.assert_replicated()


def test_bad_input_gets_one_line(tmp_path: Path, mounted: Cluster) -> None:
    done = fsrep_resync(str(tmp_path))
    assert done.returncode == 1
    assert "not an fsrep mount" in done.stderr
    assert done.stderr.count("\n") == 1
    done = fsrep_resync(str(mounted.mnt), "--group", "nope")
    assert done.returncode == 1
    assert "no consistency group 'nope'" in done.stderr
    done = fsrep_resync(str(mounted.mnt), "--rate-limit", "fast")
    assert done.returncode == 2
    assert "is not a rate" in done.stderr
    assert "Traceback" not in done.stderr
    done = fsrep_resync(str(mounted.mnt), "--mode", "slow")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
    run_fsrep("status", str(mounted.mnt))
