"""The link itself failing, through a FaultProxy between the primary and
the secondary: cut while clients write, stalled until the ack timeout,
slowed down, what a resync after a cut carries, and a cut in the middle of
a resync. Every test ends InSync with identical trees."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.conftest import ACKS_STOPPED, LINK_CLOSED, SESSION_CLOSED, Cluster, fsrep_resync, wait_for, write_random

KiB = 1024
MiB = 1024 * KiB
REGION = 4 * KiB
RECONNECT_DEADLINE = 30.0  # reconnect backoff starts at 0.5 s and doubles while the link is down
NOTICE_DEADLINE = 10.0  # for the primary to notice a broken link


class _Writer:
    """Creates files and rewrites regions of *big* (if given) through the
    mount, in a thread, until stopped (or ``limit`` rounds). Errors are
    raised by ``stop()``."""

    def __init__(self, root: Path, big: Path | None, *, limit: int = 5000, seed: int = 1, prefix: str = "w",
                 file_bytes: int = 3 * REGION, pace: float = 0.0) -> None:
        self.root, self.big, self.limit, self.prefix, self.file_bytes = root, big, limit, prefix, file_bytes
        self.pace = pace  # seconds a round takes at least: a steady rate, not as fast as the mount goes
        self.rounds = 0
        self.error: BaseException | None = None
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link-test-writer", daemon=True)

    def __enter__(self) -> _Writer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                big = None if self.big is None else stack.enter_context(open(self.big, "r+b"))
                size = 0 if big is None else os.fstat(big.fileno()).st_size
                for i in range(self.limit):
                    if self._stop.wait(self.pace) if self.pace else self._stop.is_set():
                        return
                    data = os.urandom(self._rng.randrange(0, self.file_bytes))
                    (self.root / f"{self.prefix}{i:05d}").write_bytes(data)
                    if big is not None:
                        length = self._rng.randrange(1, 16 * KiB)
                        os.pwrite(big.fileno(), os.urandom(length), self._rng.randrange(0, size - length))
                    self.rounds = i + 1
        except BaseException as exc:  # raised in the test thread by stop()
            self.error = exc

    def wait_rounds(self, more: int, what: str) -> None:
        """Wait until *more* rounds past the current one are done."""
        target = self.rounds + more
        wait_for(lambda: self.rounds >= target or self.error is not None or not self._thread.is_alive(), what,
                 timeout=NOTICE_DEADLINE)
        assert self.error is None, f"the writer failed: {self.error!r}"
        assert self.rounds >= target, f"the writer stopped after {self.rounds} rounds (limit {self.limit})"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(NOTICE_DEADLINE)
        assert not self._thread.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error




@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_link_cut_during_writes_resyncs_by_itself_when_restored(proxied: Cluster) -> None:
    proxied.mount()
    assert proxied.status()["state"] == "InSync"
    big = proxied.mnt / "big"
    write_random(big, 4)
    # A steady rate: while the link is cut, writes go as fast as the disk, for as long as the reconnect backoff
    # (seconds) and the resync take, and the limit bounds the rounds.
    with _Writer(proxied.mnt, big, limit=20_000, pace=0.005) as writer:
        writer.wait_rounds(20, "writes under way")
        proxied.proxy.cut()
        status = proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
        assert "link lost" in status["stale_reason"]
        writer.wait_rounds(20, "writes while the link is cut")
        assert not proxied.status()["connected"], "connected through a cut link"
        assert proxied.status()["dirty_bytes"] > 0
        proxied.proxy.restore()
        proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)  # while the writer keeps going
        writer.wait_rounds(20, "writes once InSync again")
    status = proxied.status()
    assert status["state"] == "InSync", status
    assert status["dirty_bytes"] == 0, status
    assert "quick resync complete" in proxied.primary_log()
    proxied.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_a_directory_clients_keep_filling_is_resynced_while_they_go_on(proxied: Cluster) -> None:
    """A dirty directory is compared in steps that let clients in; one they
    create files in all along changes during every comparison. The resync
    still ends: that directory's next comparison holds their changes
    (test_contended_directory pins that decision; whether a change comes
    in during a comparison here depends on timing). Three writers, so
    that some change comes in at most steps."""
    proxied.mount()
    spool = proxied.mnt / "spool"
    spool.mkdir()
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    for i in range(8 * 512):  # eight steps of a comparison: some writer gets in during one
        (spool / f"old{i:05d}").write_bytes(b"%d" % i)
    # No write waits for an ack: all are in spool, which stays dirty until compared.
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(_Writer(spool, None, limit=100_000, seed=n, prefix=f"w{n}-", file_bytes=1))
                   for n in range(3)]
        for writer in writers:
            writer.wait_rounds(20, "files created in the dirty directory")
        proxied.proxy.restore()
        # While the writers keep creating, on a slow disk: a 4096-entry backlog and what they add meanwhile.
        proxied.wait_state("InSync", timeout=2 * RECONNECT_DEADLINE)
        for writer in writers:
            writer.wait_rounds(20, "files created once InSync again")
    assert proxied.status()["dirty_bytes"] == 0
    proxied.assert_replicated()


@pytest.mark.expect_log(ACKS_STOPPED, SESSION_CLOSED)
def test_stalled_link_goes_out_of_sync_after_the_ack_timeout_and_recovers(proxied: Cluster) -> None:
    proxied.mount("--ack-timeout", "1")
    (proxied.mnt / "before").write_bytes(os.urandom(10 * KiB))
    big = proxied.mnt / "big"
    write_random(big, 1)
    proxied.proxy.stall()
    with _Writer(proxied.mnt, big, seed=2) as writer:  # the first write waits for the ack timeout
        status = proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
        assert "no acknowledgement for 1s" in status["stale_reason"], status
        writer.wait_rounds(20, "writes while the link is stalled")
    # The abandoned connection is still held open, and the primary's next attempt hangs in its handshake:
    # on restore, the secondary gets the old session's held frames and the new handshake at once.
    wait_for(lambda: proxied.proxy.connections >= 2, "a reconnection attempt held by the stall",
             timeout=NOTICE_DEADLINE)
    status = proxied.status()
    assert status["state"] == "OutOfSync", status
    assert not status["connected"], status
    proxied.proxy.restore()
    proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    (proxied.mnt / "after").write_bytes(os.urandom(10 * KiB))
    assert proxied.status()["state"] == "InSync"
    proxied.assert_replicated()


def test_a_slow_link_still_replicates_and_stays_in_sync(proxied: Cluster) -> None:
    delay = 0.005
    proxied.proxy.delay(delay)
    proxied.mount()
    m = proxied.mnt
    started = time.monotonic()
    for i in range(20):
        (m / f"small{i}").write_bytes(os.urandom(1000 + i))
    # Each replicated change waits for its ack: at least one round trip through the delay.
    assert time.monotonic() - started >= 20 * 2 * delay, "the delay was not applied"
    assert proxied.status()["state"] == "InSync"
    (m / "dir" / "deep").mkdir(parents=True)
    write_random(m / "dir" / "deep" / "big", 8)
    assert proxied.status()["state"] == "InSync"
    (m / "small0").rename(m / "dir" / "moved")
    (m / "small1").unlink()
    os.truncate(m / "dir" / "deep" / "big", 3 * MiB + 17)
    os.chmod(m / "small2", 0o600)
    with open(m / "dir" / "deep" / "big", "r+b") as f:
        for i in range(50):
            os.pwrite(f.fileno(), os.urandom(REGION), i * 61 * REGION % (3 * MiB))
    status = proxied.status()
    assert status["state"] == "InSync", status
    assert status["connected"], status
    assert status["resync_bytes_sent"] == 0, "a resync ran: the link was lost at some point"
    assert "-> OutOfSync" not in proxied.primary_log(), "the group left InSync on a slow link"
    proxied.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_resync_after_a_cut_carries_about_the_dirty_bytes(proxied: Cluster) -> None:
    proxied.mount()
    big = proxied.mnt / "disk.img"
    write_random(big, 64)
    assert proxied.status()["state"] == "InSync"
    proxied.proxy.cut()
    before = proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)["resync_bytes_sent"]
    offsets = [i * 4 * MiB + (i * 37 % 1024) * REGION for i in range(16)]  # scattered, one region each
    with open(big, "r+b") as f:
        for offset in offsets:
            os.pwrite(f.fileno(), os.urandom(REGION), offset)
    dirty = 16 * REGION
    assert proxied.status()["dirty_bytes"] == dirty
    proxied.proxy.reset_counters()
    proxied.proxy.restore()
    status = proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    carried, returned = proxied.proxy.bytes_to_secondary, proxied.proxy.bytes_to_primary
    assert status["resync_bytes_sent"] - before == dirty, status
    # Besides the data: the handshake, frame headers, the file's attributes, the generation and pings —
    # about 700 bytes measured; 8 KiB leaves room for a few more pings on a slow machine.
    assert dirty <= carried <= dirty * 1.1 + 8 * KiB, f"{carried} bytes crossed the link for {dirty} dirty"
    assert carried < big.stat().st_size // 100
    assert returned < 64 * KiB, f"{returned} bytes came back from the secondary"
    proxied.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_link_cut_during_a_resync_loses_nothing_that_was_in_flight(proxied: Cluster) -> None:
    proxied.mount("--resync-rate-limit", "2M")  # 1 MiB resync writes, one every half second
    big = proxied.mnt / "big"
    write_random(big, 8)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    with open(big, "r+b") as f:
        os.pwrite(f.fileno(), os.urandom(8 * MiB), 0)
    proxied.proxy.restore()
    proxied.wait_state("Resyncing", timeout=RECONNECT_DEADLINE)
    proxied.proxy.stall()  # the next resync write stays unacknowledged ...
    wait_for(lambda: proxied.status()["ops_in_flight"] > 0, "a resync write in flight", timeout=NOTICE_DEADLINE)
    proxied.proxy.cut()  # ... and is lost with the link, as on a real network
    status = proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    assert status["dirty_bytes"] > 0, f"the cut did not interrupt the resync: {status}"
    proxied.proxy.restore()
    proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    proxied.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_link_cut_during_a_resync_of_scattered_runs_loses_none_of_them(proxied: Cluster) -> None:
    """Scattered 4 KiB runs travel many to a frame (WriteRuns): every run of
    a frame lost with the link must be dirty again, not only the first."""
    proxied.mount("--resync-rate-limit", "1M")  # a step of 64 runs (256 KiB) every quarter second
    big = proxied.mnt / "big"
    write_random(big, 8)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    regions = random.Random(7).sample(range(8 * MiB // 4096), 512)
    with open(big, "r+b") as f:
        for region in regions:
            os.pwrite(f.fileno(), os.urandom(4096), region * 4096)
    proxied.proxy.restore()
    proxied.wait_state("Resyncing", timeout=RECONNECT_DEADLINE)
    proxied.proxy.stall()
    wait_for(lambda: proxied.status()["ops_in_flight"] > 0, "a resync frame in flight", timeout=NOTICE_DEADLINE)
    proxied.proxy.cut()
    status = proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    assert status["dirty_bytes"] > 4096, f"the cut did not interrupt the resync: {status}"
    proxied.proxy.restore()
    proxied.wait_state("InSync", timeout=RECONNECT_DEADLINE)
    proxied.assert_replicated()


@pytest.mark.expect_log(LINK_CLOSED, SESSION_CLOSED)
def test_fsrep_resync_reconnects_at_once_instead_of_waiting_out_the_backoff(proxied: Cluster) -> None:
    proxied.mount()
    write_random(proxied.mnt / "f", 1)
    proxied.proxy.cut()
    proxied.wait_state("OutOfSync", timeout=NOTICE_DEADLINE)
    with open(proxied.mnt / "f", "r+b") as f:
        f.write(os.urandom(64 * KiB))
    attempts = proxied.proxy.accepted
    # Three refused attempts: the backoff has doubled to 2 s and more before the next.
    wait_for(lambda: proxied.proxy.accepted >= attempts + 3, "reconnect attempts", timeout=RECONNECT_DEADLINE)
    proxied.proxy.restore()
    done = fsrep_resync(str(proxied.mnt), "--json")
    assert done.returncode == 0, done.stderr  # without the immediate attempt: "unreachable", exit 1
    assert proxied.status()["state"] == "InSync"
    proxied.assert_replicated()
