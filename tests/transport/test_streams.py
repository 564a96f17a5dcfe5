"""The trio glue: connect, authenticate, move frames, and turn every failure
of the link into LinkDown (or AuthenticationError for a wrong key)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import transport as tp
from transport._frames import Proof

KEY = b"k" * 32
OTHER_KEY = b"x" * 32
GROUP = b"g" * 16
TIMEOUT = 1.0
SHORT = 0.2
LOCALHOST = "127.0.0.1"


@asynccontextmanager
async def _listening() -> AsyncIterator[tuple[trio.SocketListener, int]]:
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    listener = listeners[0]
    try:
        yield listener, listener.socket.getsockname()[1]
    finally:
        for each in listeners:
            await each.aclose()


async def _read_frames(stream: trio.abc.ReceiveStream) -> list[tp.Frame]:
    """Every frame the other side sends until it closes the stream."""
    decoder = tp.FrameDecoder()
    frames = []
    while True:
        data = await stream.receive_some(65536)
        decoder.receive_data(data)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
        if not data:
            return frames


def _unlink(seq: int) -> tp.Unlink:
    return tp.Unlink(seq=seq, path=f"f{seq}".encode())


async def test_good_key_opens_the_session_and_operations_and_acks_flow() -> None:
    ops = [_unlink(6), tp.Write(seq=7, path=b"f", offset=0, data=b"x" * 300_000), _unlink(8)]
    received: list[tp.Frame] = []

    async def secondary(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        conn, group_id = await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT)
        assert group_id == GROUP
        assert conn.session.state is tp.SessionState.AUTHENTICATED
        await conn.send(tp.Welcome(last_seq=5, fresh=0))
        for _ in ops:
            op = await conn.receive_event(idle_timeout=TIMEOUT)
            received.append(op)
            await conn.send(tp.Ack(seq=op.seq))
        await conn.aclose()

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(secondary, listener)
            conn, welcome = await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)
            assert welcome == tp.Welcome(last_seq=5, fresh=0)
            assert conn.session.state is tp.SessionState.OPEN
            for op in ops:
                conn.enqueue(op)
            await conn.flush()
            acks = [await conn.receive_event(idle_timeout=TIMEOUT) for _ in ops]
            assert acks == [tp.Ack(seq=6), tp.Ack(seq=7), tp.Ack(seq=8)]
            assert conn.session.last_acked == 8
            await conn.aclose()
    assert received == ops


async def test_push_now_hands_frames_to_the_socket_in_order_and_flush_sends_the_rest() -> None:
    """Frames pushed without the sender task, one larger than the socket
    takes at once, arrive whole and in order once flush sends the rest."""
    ops = [_unlink(6), tp.Write(seq=7, path=b"f", offset=0, data=bytes(range(256)) * 12_000), _unlink(8)]
    received: list[tp.Frame] = []
    first_arrived, all_arrived = trio.Event(), trio.Event()

    async def secondary(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        conn, _ = await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT)
        await conn.send(tp.Welcome(last_seq=5, fresh=0))
        for _ in ops:
            received.append(await conn.receive_event(idle_timeout=TIMEOUT))
            first_arrived.set()
        all_arrived.set()
        await conn.aclose()

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(secondary, listener)
            conn, _ = await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)
            conn.enqueue(ops[0])
            conn.push_now()
            await first_arrived.wait()  # no flush, no sender task: push_now sent it
            for op in ops[1:]:
                conn.enqueue(op)
                conn.push_now()
            await conn.flush()
            await all_arrived.wait()
            await conn.aclose()
    assert received == ops


async def test_wrong_key_is_an_authentication_error_on_the_primary_and_link_down_on_the_secondary() -> None:
    outcome: dict[str, BaseException] = {}

    async def secondary(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        with pytest.raises(tp.LinkDown) as caught:
            await tp.accept_secondary_session(stream, OTHER_KEY, "primary", TIMEOUT)
        outcome["secondary"] = caught.value

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(secondary, listener)
            with pytest.raises(tp.AuthenticationError):
                await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)
    assert "closed the session" in str(outcome["secondary"])


async def test_forged_proof_and_operation_are_refused_before_anything_is_returned() -> None:
    attacker, server = trio.testing.memory_stream_pair()
    await attacker.send_all(tp.encode(tp.Hello(group_id=GROUP, nonce=b"a" * 32))
                            + tp.encode(Proof(proof=b"\0" * 32)) + tp.encode(_unlink(1)))
    with trio.fail_after(5):
        with pytest.raises(tp.LinkDown, match="protocol error") as caught:
            await tp.accept_secondary_session(server, KEY, "attacker", TIMEOUT)
        assert isinstance(caught.value.__cause__, tp.AuthenticationError)
        frames = await _read_frames(attacker)
    assert isinstance(frames[-1], tp.Error)
    assert not any(isinstance(f, tp.Welcome) for f in frames)


async def test_operation_before_proof_is_refused_and_never_returned() -> None:
    attacker, server = trio.testing.memory_stream_pair()
    await attacker.send_all(tp.encode(tp.Hello(group_id=GROUP, nonce=b"a" * 32)) + tp.encode(_unlink(1)))
    with trio.fail_after(5):
        with pytest.raises(tp.LinkDown, match="unexpected Unlink"):
            await tp.accept_secondary_session(server, KEY, "attacker", TIMEOUT)
        frames = await _read_frames(attacker)
    assert isinstance(frames[-1], tp.Error)


async def test_silent_secondary_is_link_down_within_the_timeout() -> None:
    async def silent(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        async with stream:
            await trio.sleep_forever()

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(silent, listener)
            start = trio.current_time()
            with pytest.raises(tp.LinkDown, match="handshake"):
                await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, SHORT)
            assert trio.current_time() - start < 2
            nursery.cancel_scope.cancel()


async def test_silent_primary_is_link_down_when_the_handshake_timeout_is_over(
        autojump_clock: trio.testing.MockClock) -> None:
    _, stream = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with trio.fail_after(5), pytest.raises(tp.LinkDown, match="did not authenticate"):
        await tp.accept_secondary_session(stream, KEY, "primary", SHORT)
    assert trio.current_time() - start == pytest.approx(SHORT)


async def test_a_primary_that_trickles_its_hello_is_dropped_when_the_handshake_timeout_is_over(
        autojump_clock: trio.testing.MockClock) -> None:
    hello = tp.encode(tp.Hello(group_id=GROUP, nonce=b"n" * 32))
    client, stream = trio.testing.memory_stream_pair()

    async def trickle() -> None:
        for byte in hello:  # each byte well within the timeout, the whole never
            try:
                await client.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                return  # dropped
            await trio.sleep(SHORT / 4)
        raise AssertionError("the whole Hello was sent before the secondary dropped the connection")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            start = trio.current_time()
            with pytest.raises(tp.LinkDown, match="did not authenticate"):
                await tp.accept_secondary_session(stream, KEY, "primary", SHORT)
            assert trio.current_time() - start == pytest.approx(SHORT)


async def test_a_huge_frame_header_before_authentication_drops_the_peer_without_waiting_for_the_body() -> None:
    header = struct.pack(">IBB", tp.MAX_DATA, tp.PROTOCOL_VERSION, tp.Hello.TYPE)
    with trio.fail_after(5):
        async with _listening() as (listener, port):
            client = await trio.open_tcp_stream(LOCALHOST, port)
            async with client:
                await client.send_all(header + b"x" * 100)
                stream = await listener.accept()
                with pytest.raises(tp.LinkDown, match=f"frame length {tp.MAX_DATA} outside 2..4096"):
                    await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT)
                frames = await _read_frames(client)
    assert [type(f) for f in frames] == [tp.Error]


async def test_unreachable_secondary_is_link_down() -> None:
    async with _listening() as (_, port):
        pass  # the port is free again, and nothing listens on it
    with trio.fail_after(5), pytest.raises(tp.LinkDown, match="cannot connect"):
        await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)


async def test_secondary_closing_during_the_handshake_is_link_down() -> None:
    async def slam(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        await stream.aclose()

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(slam, listener)
            with pytest.raises(tp.LinkDown):
                await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)


# --- an open connection ---------------------------------------------------------------


@asynccontextmanager
async def _open_pair(last_seq: int = 0) -> AsyncIterator[tuple[tp.Connection, tp.Connection]]:
    """A primary and a secondary connection, OPEN, over 127.0.0.1."""
    async with _listening() as (listener, port):
        secondary: list[tp.Connection] = []

        async def accept() -> None:
            stream = await listener.accept()
            conn, _ = await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT)
            await conn.send(tp.Welcome(last_seq=last_seq, fresh=0))
            secondary.append(conn)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            primary, _ = await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)
        try:
            yield primary, secondary[0]
        finally:
            await primary.aclose()
            await secondary[0].aclose()


async def test_enqueue_never_checkpoints_and_the_sender_task_writes_it() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, secondary), trio.open_nursery() as nursery:
            nursery.start_soon(primary.serve_sender)
            with trio.testing.assert_no_checkpoints():
                for seq in (1, 2, 3):
                    primary.enqueue(_unlink(seq))
            got = [await secondary.receive_event(idle_timeout=TIMEOUT) for _ in range(3)]
            assert got == [_unlink(1), _unlink(2), _unlink(3)]
            nursery.cancel_scope.cancel()


async def test_idle_peer_is_link_down_after_the_idle_timeout() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, _):
            with pytest.raises(tp.LinkDown, match="silent"):
                await primary.receive_event(idle_timeout=SHORT)


async def test_peer_closing_the_connection_is_link_down() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, secondary):
            await secondary.aclose()
            with pytest.raises(tp.LinkDown, match="closed"):
                await primary.receive_event(idle_timeout=TIMEOUT)


async def test_peer_error_frame_is_link_down_with_its_message() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, secondary):
            await secondary.send(tp.Error(message="replica disk full"))
            with pytest.raises(tp.LinkDown, match="replica disk full"):
                await primary.receive_event(idle_timeout=TIMEOUT)


async def test_protocol_error_from_the_peer_is_link_down_and_the_peer_is_told() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, secondary):
            await secondary.stream.send_all(tp.encode(tp.Ack(seq=99)))  # nothing was sent
            with pytest.raises(tp.LinkDown, match="outside") as caught:
                await primary.receive_event(idle_timeout=TIMEOUT)
            assert isinstance(caught.value.__cause__, tp.RemoteProtocolError)
            with pytest.raises(tp.LinkDown, match="outside"):
                await secondary.receive_event(idle_timeout=TIMEOUT)


async def test_enqueue_after_close_is_link_down() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, _):
            await primary.aclose()
            with pytest.raises(tp.LinkDown, match="closed"):
                primary.enqueue(_unlink(1))


async def test_sending_on_a_dead_stream_is_link_down() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (primary, _):
            await primary.stream.aclose()
            with pytest.raises(tp.LinkDown):
                await primary.send(_unlink(1))


async def test_next_buffered_event_returns_what_arrived_without_io() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (_, secondary):
            secondary.session.receive_data(tp.encode(_unlink(1)) + tp.encode(_unlink(2)))
            with trio.testing.assert_no_checkpoints():
                assert secondary.next_buffered_event() == _unlink(1)
                assert secondary.next_buffered_event() == _unlink(2)
                assert secondary.next_buffered_event() is None


async def test_buffered_protocol_error_surfaces_at_the_next_receive() -> None:
    with trio.fail_after(5):
        async with _open_pair() as (_, secondary):
            secondary.session.receive_data(tp.encode(_unlink(1)) + tp.encode(_unlink(5)))
            assert secondary.next_buffered_event() == _unlink(1)
            assert secondary.next_buffered_event() is None  # the bad frame is held back ...
            with pytest.raises(tp.LinkDown, match="expected 2"):
                await secondary.receive_event(idle_timeout=TIMEOUT)  # ... and raised here


async def test_a_busy_link_still_lets_other_tasks_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that are already waiting are taken without a scheduler round
    each, but a receiver that always finds more still yields now and then."""
    monkeypatch.setattr("transport._streams._YIELD_EVERY", 2)
    frames = [tp.Write(seq=seq, path=b"f", offset=0, data=bytes(70_000)) for seq in range(1, 41)]
    ran = 0

    async def other_task() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(10):
        async with _open_pair() as (primary, secondary), trio.open_nursery() as nursery:
            for frame in frames:
                primary.enqueue(frame)
            await primary.flush()  # all of it waits in the socket buffers: the receiver never blocks
            nursery.start_soon(other_task)
            got = [await secondary.receive_event(idle_timeout=TIMEOUT) for _ in frames]
            during = ran
            nursery.cancel_scope.cancel()
    assert got == frames
    assert during >= 1


async def test_a_large_write_is_received_whole_over_a_socket() -> None:
    """A Write well over the large-frame size arrives in place (recv into
    its own buffer) between two small frames, all in order."""
    big = tp.Write(seq=2, path=b"f", offset=0, data=bytes(range(256)) * 8192)
    frames = [_unlink(1), big, _unlink(3)]
    with trio.fail_after(10):
        async with _open_pair() as (primary, secondary):
            for frame in frames:
                primary.enqueue(frame)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(primary.flush)
                got = [await secondary.receive_event(idle_timeout=TIMEOUT) for _ in frames]
    assert got == frames
    assert isinstance(got[1].data, memoryview)


def test_the_first_error_of_nested_groups_is_the_leaf() -> None:
    inner = tp.LinkDown("the link")
    group = BaseExceptionGroup("outer", [ExceptionGroup("", [inner, ValueError("second")])])
    assert tp.first_error(group) is inner
    assert str(tp.first_error(group)) == "the link"
