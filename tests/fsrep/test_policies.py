"""semi-sync and async: changes return before the secondary has them, the
lag is bounded and reported, and the trees end identical."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.conftest import DEADLINE, LINK_CLOSED, Cluster, run_fsrep, wait_for

MiB = 1024 * 1024


def test_semi_sync_returns_before_the_ack_and_reports_the_lag(cluster: Cluster) -> None:
    cluster.mount("--lag-budget", "8M", "--ack-timeout", "60", policy="semi-sync")
    (cluster.mnt / "warm").write_bytes(b"x")
    cluster.secondary.proc.send_signal(signal.SIGSTOP)  # silent: a sync write would wait for its ack
    try:
        with open(cluster.mnt / "f", "wb") as f:
            f.write(os.urandom(2 * MiB))  # under the budget: returns without the secondary
        status = cluster.status()
        assert status["policy"] == "semi-sync"
        assert status["state"] == "InSync"
        assert 2 * MiB <= status["lag_bytes"] <= 8 * MiB + MiB
        wait_for(lambda: cluster.status()["lag_seconds"] >= 0.5, "the lag to grow while nothing is acknowledged")
    finally:
        cluster.secondary.proc.send_signal(signal.SIGCONT)
    with open(cluster.mnt / "f", "ab") as f:
        f.write(b"tail")
        os.fsync(f.fileno())  # fsync waits for both sides: nothing is in flight afterwards
    status = cluster.status()
    assert status["ops_in_flight"] == 0
    assert status["lag_bytes"] == 0
    assert status["lag_seconds"] == 0
    assert "semi-sync" in run_fsrep("status", str(cluster.mnt)).stdout
    cluster.assert_replicated()


def test_semi_sync_writes_wait_once_the_lag_budget_is_spent(cluster: Cluster) -> None:
    cluster.mount("--lag-budget", "1M", "--ack-timeout", "60", policy="semi-sync")
    (cluster.mnt / "warm").write_bytes(b"x")
    chunk, budget = 256 * 1024, MiB
    done: list[int] = []
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            with open(cluster.mnt / "f", "wb") as f:
                for i in range(16):  # 4 MiB: four times the budget
                    f.write(os.urandom(chunk))
                    done.append(i)
        except BaseException as exc:  # reported by the test thread
            failed.append(exc)

    cluster.secondary.proc.send_signal(signal.SIGSTOP)  # acks stop: the lag can only grow
    thread = threading.Thread(target=writer, daemon=True)
    try:
        thread.start()
        wait_for(lambda: cluster.status()["lag_bytes"] >= budget, "the budget spent")
        spent = time.monotonic()

        def held_for_a_second() -> bool:
            """However long it tries, the writer stays within one write past the budget."""
            assert len(done) <= budget // chunk + 1, len(done)
            assert thread.is_alive()
            assert cluster.status()["lag_bytes"] <= budget + chunk + 4096
            return time.monotonic() - spent >= 1.0

        wait_for(held_for_a_second, "a second of the writer held at the budget")
    finally:
        cluster.secondary.proc.send_signal(signal.SIGCONT)
    thread.join(timeout=DEADLINE)
    assert not thread.is_alive(), failed
    assert not failed, failed
    assert len(done) == 16
    cluster.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED)
def test_async_ships_changes_periodically(cluster: Cluster) -> None:
    cluster.mount("--async-interval", "2", policy="async")
    for i in range(20):
        (cluster.mnt / f"file{i}").write_bytes(os.urandom(64 * 1024))
    status = cluster.status()
    assert status["policy"] == "async"
    assert status["state"] in ("OutOfSync", "Resyncing")  # applied here; shipped on the next tick
    assert status["lag_bytes"] > 0
    assert status["lag_seconds"] > 0  # since the first change the replica lacks
    status = cluster.wait_state("InSync")
    assert status["lag_bytes"] == 0
    assert status["lag_seconds"] == 0
    os.rename(cluster.mnt / "file1", cluster.mnt / "renamed")
    (cluster.mnt / "file2").unlink()
    with open(cluster.mnt / "file3", "r+b") as f:
        f.seek(5000)
        f.write(b"changed")
    cluster.secondary.stop(signal.SIGKILL)
    (cluster.mnt / "while-down").write_text("kept dirty")
    cluster.secondary.start()
    cluster.wait_state("InSync")
    cluster.assert_replicated()
