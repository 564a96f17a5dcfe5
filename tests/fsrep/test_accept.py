"""Accepting peers that have proved nothing yet: the handshake slots per
address and in all, and accept errors logged once per interval."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from fsrep._accept import (
    ACCEPT_PAUSE,
    REPORT_INTERVAL,
    Handshake,
    Handshakes,
    address_key,
    serve_listeners,
)


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_a_peer_counts_under_its_ipv4_address_or_its_ipv6_64(host: str, key: str) -> None:
    assert address_key(host) == key


async def test_one_address_never_holds_more_than_its_share_and_its_newest_connection_gets_in() -> None:
    handshakes = Handshakes(total=100, per_address=3)
    first = [handshakes.admit("192.0.2.1", port) for port in range(3)]
    newest = handshakes.admit("192.0.2.1", 99)
    assert [h.evicted for h in first] == [True, False, False]  # the oldest made room
    assert not newest.evicted
    assert handshakes.under_way == 3
    other = handshakes.admit("192.0.2.2", 1)
    assert not other.evicted
    assert handshakes.under_way == 4


async def test_when_all_slots_are_taken_the_busiest_address_gives_one_up() -> None:
    handshakes = Handshakes(total=4, per_address=3)
    flood = [handshakes.admit("192.0.2.1", port) for port in range(3)]
    primary = handshakes.admit("192.0.2.9", 1)
    late = handshakes.admit("192.0.2.5", 1)
    assert [h.evicted for h in flood] == [True, False, False]
    assert not primary.evicted
    assert not late.evicted
    assert handshakes.under_way == 4


async def test_leaving_the_handshake_frees_its_slot_once() -> None:
    handshakes = Handshakes(total=2, per_address=2)
    done = handshakes.admit("192.0.2.1", 1)
    with done:
        await trio.lowlevel.checkpoint()
    handshakes.release(done)  # again: harmless
    kept = handshakes.admit("192.0.2.1", 2)
    newer = handshakes.admit("192.0.2.1", 3)
    assert not kept.evicted
    assert not newer.evicted
    assert handshakes.under_way == 2


async def test_an_evicted_handshake_is_cancelled_where_it_waits() -> None:
    handshakes = Handshakes(total=1, per_address=1)
    old = handshakes.admit("192.0.2.1", 1)
    reached_the_end = False

    async def authenticate(handshake: Handshake) -> None:
        nonlocal reached_the_end
        with handshake:
            await trio.sleep_forever()
        reached_the_end = True

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(authenticate, old)
            await trio.testing.wait_all_tasks_blocked()
            handshakes.admit("192.0.2.2", 1)
    assert old.evicted
    assert reached_the_end


class _ExhaustedListener(trio.abc.Listener[trio.SocketStream]):
    """A listener whose accept fails as when the process is out of
    descriptors (a real EMFILE is what the handshake caps prevent)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.recovered = trio.Event()

    async def accept(self) -> trio.SocketStream:
        self.calls += 1
        if self.calls > self.failures:
            self.recovered.set()
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        raise OSError(errno.EMFILE, "Too many open files")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_errors_pause_accepting_and_are_logged_once_per_interval_with_a_count(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fsrep._accept")
    failures = int(3 * REPORT_INTERVAL / ACCEPT_PAUSE)  # 30 s of EMFILE
    listener = _ExhaustedListener(failures)

    async def never(stream: trio.SocketStream, handshake: Handshake) -> None:
        raise AssertionError("no connection was accepted")

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(serve_listeners, never, [listener], Handshakes(total=8))
        await listener.recovered.wait()
        await trio.sleep(REPORT_INTERVAL)
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start >= failures * ACCEPT_PAUSE  # paused after each failure
    lines = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert all(r.exc_info is None for r in lines)
    assert 3 <= len(lines) <= 5, [r.getMessage() for r in lines]
    assert "EMFILE" in lines[0].getMessage()
    counted = sum(int(r.getMessage().split(": ")[1].split()[0]) for r in lines[1:])
    assert counted + 1 == failures
