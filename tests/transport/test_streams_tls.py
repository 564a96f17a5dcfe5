"""The session inside mutual TLS: the contexts demand what they must, frames
flow in order through SSLStream's send path (never two sends at once),
and a TLS handshake that does not come is bounded by the handshake
timeout on both sides."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

import transport as tp
from tests.certs import Identity, issue, make_ca

KEY = b"k" * 32
GROUP = b"g" * 16
TIMEOUT = 5.0
SHORT = 0.3
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext


def _files(identity: Identity) -> tp.TLSFiles:
    return tp.TLSFiles(cert=str(identity.cert), key=str(identity.key), ca=str(identity.ca))


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> Contexts:
    ca = make_ca(tmp_path_factory.mktemp("pki"), "ca")
    return Contexts(server=tp.server_context(_files(issue(ca, "secondary"))),
                    client=tp.client_context(_files(issue(ca, "primary"))))


@asynccontextmanager
async def _listening() -> AsyncIterator[tuple[trio.SocketListener, int]]:
    listeners = await trio.open_tcp_listeners(0, host=LOCALHOST)
    try:
        yield listeners[0], listeners[0].socket.getsockname()[1]
    finally:
        for each in listeners:
            await each.aclose()


@asynccontextmanager
async def _open_pair(contexts: Contexts) -> AsyncIterator[tuple[tp.Connection, tp.Connection]]:
    """A primary and a secondary connection, OPEN, over TLS on 127.0.0.1."""
    async with _listening() as (listener, port):
        secondary: list[tp.Connection] = []

        async def accept() -> None:
            stream = await listener.accept()
            conn, _ = await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT, tls=contexts.server)
            await conn.send(tp.Welcome(last_seq=0, fresh=1))
            secondary.append(conn)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            primary, _ = await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT, tls=contexts.client)
        try:
            yield primary, secondary[0]
        finally:
            await primary.aclose()
            await secondary[0].aclose()


def test_both_contexts_demand_a_certificate_of_the_ca_and_tls_1_2_or_newer(contexts: Contexts) -> None:
    for context in (contexts.server, contexts.client):
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert contexts.client.check_hostname


async def test_frames_from_concurrent_senders_arrive_whole_and_in_order_over_tls(contexts: Contexts) -> None:
    """The sender task, flushes and sends of several tasks at once: the
    send lock keeps SSLStream.send_all to one caller (trio raises
    BusyResourceError otherwise), and small frames go joined with large ones."""
    frames: list[tp.Frame] = []
    for seq in range(1, 301):
        if seq % 50 == 0:
            frames.append(tp.Write(seq=seq, path=b"f", offset=0, data=bytes([seq % 256]) * 1_500_000))
        elif seq % 3 == 0:
            frames.append(tp.Write(seq=seq, path=b"f", offset=seq, data=bytes([seq % 256]) * 4096))
        else:
            frames.append(tp.Unlink(seq=seq, path=f"f{seq}".encode()))
    with trio.fail_after(30):
        async with _open_pair(contexts) as (primary, secondary), trio.open_nursery() as nursery:
            assert primary.tls_version == secondary.tls_version == "TLSv1.3"
            nursery.start_soon(primary.serve_sender)

            async def sends(part: list[tp.Frame]) -> None:
                for frame in part:
                    primary.enqueue(frame)
                    if frame.seq % 7 == 0:
                        await primary.flush()
                    await trio.lowlevel.checkpoint()

            async def one_sender_after_another() -> None:
                # enqueue order is the sequence order: hand the frames to tasks in turn
                for start in range(0, len(frames), 30):
                    async with trio.open_nursery() as inner:
                        inner.start_soon(sends, frames[start:start + 30])
                        inner.start_soon(primary.flush)

            nursery.start_soon(one_sender_after_another)
            got = [await secondary.receive_event(idle_timeout=TIMEOUT) for _ in frames]
            nursery.cancel_scope.cancel()
    assert got == frames


async def test_acks_flow_back_over_tls(contexts: Contexts) -> None:
    with trio.fail_after(10):
        async with _open_pair(contexts) as (primary, secondary):
            await primary.send(tp.Unlink(seq=1, path=b"a"))
            assert await secondary.receive_event(idle_timeout=TIMEOUT) == tp.Unlink(seq=1, path=b"a")
            await secondary.send(tp.Ack(seq=1))
            assert await primary.receive_event(idle_timeout=TIMEOUT) == tp.Ack(seq=1)


async def test_a_peer_that_never_starts_tls_is_dropped_when_the_handshake_timeout_is_over(
        contexts: Contexts, autojump_clock: trio.testing.MockClock) -> None:
    _, stream = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with trio.fail_after(5), pytest.raises(tp.LinkDown, match="did not complete the TLS handshake within"):
        await tp.accept_secondary_session(stream, KEY, "primary", SHORT, tls=contexts.server)
    assert trio.current_time() - start == pytest.approx(SHORT)  # closing does not wait on the silent peer


async def test_a_secondary_that_never_answers_tls_is_link_down_within_the_timeout(contexts: Contexts) -> None:
    async def silent(listener: trio.SocketListener) -> None:
        stream = await listener.accept()
        async with stream:
            await trio.sleep_forever()

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(silent, listener)
            start = trio.current_time()
            with pytest.raises(tp.LinkDown, match="did not complete the TLS handshake within"):
                await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, SHORT, tls=contexts.client)
            assert trio.current_time() - start < SHORT + 1
            nursery.cancel_scope.cancel()


async def test_a_plain_primary_is_refused_by_a_tls_secondary_and_told_where_to_look(contexts: Contexts) -> None:
    async def plain_primary(port: int) -> None:
        with pytest.raises(tp.LinkDown, match="closed the connection before the handshake; its log says why"):
            await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT)  # no TLS

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(plain_primary, port)
            stream = await listener.accept()
            with pytest.raises(tp.LinkDown, match="does not speak TLS"):
                await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT, tls=contexts.server)


async def test_a_tls_primary_is_refused_by_a_plain_secondary_and_both_say_why(contexts: Contexts) -> None:
    async def tls_primary(port: int) -> None:
        with pytest.raises(tp.LinkDown, match="does not speak TLS"):
            await tp.open_primary_connection(LOCALHOST, port, KEY, GROUP, TIMEOUT, tls=contexts.client)

    with trio.fail_after(5):
        async with _listening() as (listener, port), trio.open_nursery() as nursery:
            nursery.start_soon(tls_primary, port)
            stream = await listener.accept()
            with pytest.raises(tp.LinkDown, match="began a TLS handshake, and this side runs without TLS"):
                await tp.accept_secondary_session(stream, KEY, "primary", TIMEOUT)


def test_a_missing_or_unusable_file_is_named_in_one_line(tmp_path: Path) -> None:
    ca = make_ca(tmp_path, "ca")
    good, other = issue(ca, "host"), issue(ca, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    cases = [
        (tp.TLSFiles(str(missing), str(good.key), str(good.ca)), f"cannot read TLS certificate {missing}"),
        (tp.TLSFiles(str(good.cert), str(missing), str(good.ca)), f"cannot read TLS private key {missing}"),
        (tp.TLSFiles(str(garbage), str(good.key), str(good.ca)), f"TLS certificate {garbage} holds no"),
        (tp.TLSFiles(str(good.cert), str(garbage), str(good.ca)), f"TLS private key {garbage} is not"),
        (tp.TLSFiles(str(good.cert), str(good.key), str(garbage)), f"TLS CA file {garbage} holds no"),
        (tp.TLSFiles(str(good.cert), str(other.key), str(good.ca)), f"TLS private key {other.key} does not belong"),
    ]
    for files, expected in cases:
        for make in (tp.client_context, tp.server_context):
            with pytest.raises(tp.TLSFileError) as caught:
                make(files)
            assert expected in str(caught.value)
            assert "\n" not in str(caught.value)
