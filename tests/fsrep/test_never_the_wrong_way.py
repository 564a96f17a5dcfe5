"""Never resync the wrong way: generation histories on both sides decide the
direction, and when the replica holds newer or unrelated data nothing is
resynced until an operator says which side wins."""

from __future__ import annotations

import os
import signal
import uuid

import pytest

import tracking
from fsrep._digest import tree_digest
from fsrep._secondary import REPLICA_KIND
from tests.conftest import AT, Cluster, fsrep_resync, run_fsrep


def _replica_state(cluster: Cluster) -> tuple[object, dict]:
    [path] = (cluster.secondary.store / ".fsrep" / "replicas").glob("*.json")
    return path, tracking.load_state(path, REPLICA_KIND)


def test_generations_advance_on_out_of_sync_and_resync(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "a").write_text("one")
    cluster.wait_state("InSync")
    cluster.umount()
    _, state = _replica_state(cluster)
    first = state["generations"]
    [group_file] = (cluster.primary_store / ".fsrep" / "groups").glob("*.json")
    assert first
    assert first == tracking.load_state(group_file, "fsrep-group")["generations"]
    cluster.secondary.stop()
    cluster.mount()
    (cluster.mnt / "a").write_text("two")  # OutOfSync: the primary starts a new generation
    cluster.secondary.start()
    cluster.wait_state("InSync")  # resync complete: another one, sent to the replica
    cluster.umount()
    _, state = _replica_state(cluster)
    primary = tracking.load_state(group_file, "fsrep-group")["generations"]
    assert len(primary) == len(first) + 2
    assert primary[:len(first)] == first
    assert state["generations"] == [*first, primary[-1]]  # it never saw the OutOfSync one
    cluster.assert_replicated()


SPLIT_BRAIN = (r" WARNING \S+: group \S+: OutOfSync -> SplitBrain" + AT + r" \(.*; nothing is resynced until an "
               r"operator gives up a side: 'fsrep-resync MOUNTPOINT --discard primary\|secondary' \(its changes are "
               r"copied first\), or '--mode full' \(the replica's, without a copy\)\)$")


@pytest.mark.expect_log(SPLIT_BRAIN)
@pytest.mark.parametrize("history", ["newer", "unrelated"])
def test_a_replica_with_newer_or_unrelated_data_is_never_overwritten(cluster: Cluster, history: str) -> None:
    cluster.mount()
    (cluster.mnt / "a").write_text("written while in sync")
    cluster.umount()
    cluster.secondary.stop()
    path, state = _replica_state(cluster)
    other = uuid.uuid4().hex
    # As if the replica had been promoted and written to (newer), or came from another history.
    state["generations"] = state["generations"] + [other] if history == "newer" else [other]
    state["last_seq"] += 5  # it went on applying changes from somewhere else
    tracking.save_state(path, REPLICA_KIND, state)
    replica = cluster.secondary.store / state["id"]
    (replica / "theirs").write_text("a change made on the replica's side")
    before = tree_digest(replica)
    cluster.secondary.start()

    cluster.mount()
    status = cluster.wait_state("SplitBrain")
    assert status["connected"]
    assert ("newer data" if history == "newer" else "cannot tell") in status["stale_reason"]
    (cluster.mnt / "b").write_text("kept local while the operator decides")
    done = fsrep_resync(str(cluster.mnt), timeout=60)
    assert done.returncode == 1
    assert "--mode full" in done.stderr
    assert done.stderr.count("\n") == 1
    assert tree_digest(replica) == before  # nothing was resynced either way
    assert "SplitBrain" in run_fsrep("status", str(cluster.mnt)).stdout

    done = fsrep_resync(str(cluster.mnt), "--mode", "full")
    assert done.returncode == 0, done.stderr
    assert not (replica / "theirs").exists()
    cluster.assert_replicated()


@pytest.mark.expect_log(SPLIT_BRAIN)
def test_strict_refuses_to_mount_over_a_split_brain(cluster: Cluster) -> None:
    cluster.mount()
    (cluster.mnt / "a").write_text("x")
    cluster.umount()
    cluster.secondary.proc.send_signal(signal.SIGTERM)
    cluster.secondary.proc.wait(timeout=30)
    path, state = _replica_state(cluster)
    state["generations"] = [uuid.uuid4().hex]
    tracking.save_state(path, REPLICA_KIND, state)
    cluster.secondary.start()
    done = cluster.mount(policy="strict", check=False)
    assert done.returncode == 1
    assert "SplitBrain" in done.stderr
    assert "cannot tell" in done.stderr
    assert not os.path.ismount(cluster.mnt)
