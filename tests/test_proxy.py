"""The link-fault proxy itself, against a trivial echo server: it forwards
and counts, and cut, stall, delay and close do what the link tests rely on."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.proxy import FaultProxy, ProxyError

TIMEOUT = 5.0  # for anything that should happen
QUIET = 0.3  # how long nothing must arrive to count as held


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(TIMEOUT * 2)
        while data := self.request.recv(65536):  # until the peer's end of stream
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[str]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def proxy(echo: str) -> Iterator[FaultProxy]:
    with FaultProxy(echo) as p:
        yield p


def _connect(proxy: FaultProxy) -> socket.socket:
    host, port = proxy.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


def _receive(sock: socket.socket, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:  # each recv returns data or raises after TIMEOUT
        data = sock.recv(size - len(got))
        if not data:
            break
        got += data
    return bytes(got)


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_forwards_both_ways_and_counts_bytes(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 400
    with _connect(proxy) as sock:
        sock.sendall(payload)
        assert _receive(sock, len(payload)) == payload
    assert proxy.bytes_to_secondary == len(payload)
    assert proxy.bytes_to_primary == len(payload)
    proxy.reset_counters()
    assert (proxy.bytes_to_secondary, proxy.bytes_to_primary) == (0, 0)


def test_several_connections_are_forwarded_independently(proxy: FaultProxy) -> None:
    socks = [_connect(proxy) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(f"conn{i}".encode())
        assert [_receive(sock, 5) for sock in socks] == [b"conn0", b"conn1", b"conn2"]
        assert proxy.connections == 3
    finally:
        for sock in socks:
            sock.close()


def test_end_of_stream_is_passed_on_both_ways(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        assert _receive(sock, 10) == b"last words"
        assert sock.recv(1) == b""  # the echo server saw our end of stream and closed its side


def test_cut_closes_connections_and_refuses_new_ones_until_restore(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"ping")
        assert _receive(sock, 4) == b"ping"
        proxy.cut()
        assert proxy.connections == 0
        assert _closed_by_peer(sock)
    with _connect(proxy) as refused:  # accepted by the kernel, then closed by the proxy
        assert _closed_by_peer(refused)
    proxy.reset_counters()
    proxy.restore()
    with _connect(proxy) as sock:
        sock.sendall(b"again")
        assert _receive(sock, 5) == b"again"
    assert proxy.bytes_to_secondary == 5


def test_stall_holds_bytes_then_forwards_them_in_order(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        sock.sendall(b"before")
        assert _receive(sock, 6) == b"before"
        proxy.reset_counters()
        proxy.stall()
        messages = [f"message {i:03d};".encode() for i in range(200)]
        for message in messages:
            sock.sendall(message)
        sock.settimeout(QUIET)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        assert proxy.bytes_to_primary == 0
        assert proxy.connections == 1  # kept open
        sock.settimeout(TIMEOUT)
        proxy.restore()
        expected = b"".join(messages)
        assert _receive(sock, len(expected)) == expected
    assert proxy.bytes_to_secondary == len(expected)


def test_a_connection_opened_during_a_stall_is_held_too(proxy: FaultProxy) -> None:
    proxy.stall()
    with _connect(proxy) as sock:
        sock.sendall(b"held")
        sock.settimeout(QUIET)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(TIMEOUT)
        proxy.restore()
        assert _receive(sock, 4) == b"held"


def test_delay_adds_latency_each_way_and_keeps_order(proxy: FaultProxy) -> None:
    delay = 0.1
    proxy.delay(delay)
    messages = [f"<{i:04d}>".encode() for i in range(500)]
    expected = b"".join(messages)
    with _connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"x")
        assert _receive(sock, 1) == b"x"
        assert time.monotonic() - started >= 2 * delay
        for message in messages:
            sock.sendall(message)
        assert _receive(sock, len(expected)) == expected
        proxy.delay(0)
        sock.sendall(b"undelayed")
        assert _receive(sock, 9) == b"undelayed"
    with pytest.raises(ValueError, match="negative"):
        proxy.delay(-1)


def test_target_down_closes_the_client(echo: str) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))  # a port nobody listens on
        nobody = placeholder.getsockname()
        with FaultProxy(nobody) as proxy, _connect(proxy) as sock:
            assert _closed_by_peer(sock)
            assert proxy.connections == 0


def test_close_stops_listening_joins_the_thread_and_closes_connections(echo: str) -> None:
    with FaultProxy(echo) as proxy:
        sock = _connect(proxy)
        sock.sendall(b"hi")
        assert _receive(sock, 2) == b"hi"
        host, port = proxy.address.rsplit(":", 1)
    with sock:
        assert _closed_by_peer(sock)
    assert not any(t.name.startswith("FaultProxy") for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=TIMEOUT).close()
    with pytest.raises(ProxyError, match="closed"):
        proxy.cut()
    proxy.close()  # again: nothing to do
