"""Thin trio glue around the sans-IO session: one reader per connection,
sends under a lock, and every trio or socket failure turned into LinkDown in
one place (``_link_errors``).

Under TLS the stream is a trio SSLStream over the TCP stream; the TLS
handshake runs first, within the same timeout as the session's handshake,
so a peer TLS refuses never sends a frame. The socket fast paths (writev,
reads without a scheduler round) need the socket itself and are skipped:
frames then go through ``send_all`` under the send lock, small ones joined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator

import trio

from ._codec import encode
from ._errors import AuthenticationError, LinkDown, ProtocolError
from ._frames import Error, Frame, Welcome
from ._session import PrimarySession, SecondarySession
from ._tls import CLOSED, failure

log = logging.getLogger(__name__)

RECEIVE_CHUNK = 1024 * 1024
_COALESCE_BELOW = 256 * 1024
_IOV_MAX = 1024
_YIELD_EVERY = 16  # receives between yields to the scheduler while bytes keep arriving


@contextlib.contextmanager
def _link_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise LinkDown(f"{what}: {failure(exc) or exc or type(exc).__name__}") from exc


class Connection:
    """An authenticated session over a trio stream.

    Frames are queued with ``enqueue`` (a plain function, so the splitter can
    queue without a checkpoint) and written by ``serve_sender``; reads go
    through ``receive_event``.
    """

    def __init__(self, stream: trio.abc.Stream, session: PrimarySession | SecondarySession, peer: str) -> None:
        self.stream = stream
        self.session = session
        self.peer = peer
        self._queue: list[bytes | memoryview] = []
        self._queued_bytes = 0
        self._wakeup = trio.Event()
        self._send_lock = trio.Lock()
        self._closed = False
        self._pending_error: ProtocolError | None = None
        self._receives = 0
        self._heard = False  # any byte of the session from the peer yet

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the link (``TLSv1.3``); None without TLS."""
        return self.stream.version() if isinstance(self.stream, trio.SSLStream) else None

    def enqueue(self, frame: Frame) -> None:
        """Queue *frame* for sending. Never checkpoints."""
        if self._closed:
            raise LinkDown(f"connection to {self.peer} is closed")
        parts = self.session.send_parts(frame)
        self._queue.extend(parts)
        self._queued_bytes += sum(len(p) for p in parts)
        self._wakeup.set()

    def push_now(self) -> None:
        """Hand what is queued to the socket at once, without blocking, when
        no send is under way: the peer starts on it while this side goes on
        working (a large write is applied on both hosts at the same time).
        What the socket does not take, and any error, is left to the sender
        task. Never checkpoints."""
        sock = getattr(self.stream, "socket", None)
        if sock is None or self._closed or not self._queue or self._send_lock.locked():
            return
        with contextlib.suppress(OSError):  # full (EAGAIN), or broken: the sender task meets it and reports it
            self._write_some(sock.fileno())

    def _write_some(self, fd: int) -> None:
        """One writev of the head of the queue; drops what it took.

        Raises:
            OSError: BlockingIOError when the socket is full, or the link failed.
        """
        sent = os.writev(fd, self._queue[:_IOV_MAX])
        self._queued_bytes -= sent
        taken = 0
        while taken < len(self._queue) and sent >= len(self._queue[taken]):
            sent -= len(self._queue[taken])
            taken += 1
        del self._queue[:taken]
        if sent:
            self._queue[0] = memoryview(self._queue[0])[sent:]

    async def flush(self) -> None:
        """Write everything queued so far: straight from the queued pieces
        with writev on a socket (no copy into one buffer), else piece by
        piece with small ones joined."""
        sock = getattr(self.stream, "socket", None)
        if sock is not None and not self._send_lock.locked():
            # Usually the socket takes it all at once: no trip through the scheduler then.
            with _link_errors(f"send to {self.peer}"), contextlib.suppress(BlockingIOError):
                while self._queue:
                    self._write_some(sock.fileno())
            if not self._queue:
                await trio.lowlevel.checkpoint_if_cancelled()
                return
        if not self._queue and not self._send_lock.locked():
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        async with self._sending():
            if sock is not None:
                with _link_errors(f"send to {self.peer}"):
                    while self._queue:
                        try:
                            self._write_some(sock.fileno())
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(sock)
                return
            while self._queue:
                batch, self._queue = self._queue, []
                self._queued_bytes = 0
                with _link_errors(f"send to {self.peer}"):
                    small: list[bytes | memoryview] = []
                    for chunk in batch:
                        if len(chunk) < _COALESCE_BELOW:
                            small.append(chunk)
                            continue
                        if small:
                            await self.stream.send_all(b"".join(small))
                            small = []
                        await self.stream.send_all(chunk)
                    if small:
                        await self.stream.send_all(b"".join(small))

    @contextlib.asynccontextmanager
    async def _sending(self) -> AsyncIterator[None]:
        """The send lock, taken without a trip through the scheduler when it
        is free (``Lock.acquire`` always yields: one round per send, which
        shows in the latency of a small write over TLS)."""
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            yield
        finally:
            self._send_lock.release()

    async def send(self, frame: Frame) -> None:
        self.enqueue(frame)
        await self.flush()

    async def serve_sender(self) -> None:
        """Write queued frames as they come; runs until the link fails."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.flush()

    def _pending_from_session(self) -> None:
        extra = self.session.data_to_send()
        if extra:
            self._queue.append(extra)
            self._wakeup.set()

    async def receive_event(self, idle_timeout: float | None = None) -> Frame:
        """Return the next frame from the peer.

        Raises:
            LinkDown: closed, reset, silent for *idle_timeout* seconds, or a
                protocol error (logged, and told to the peer when possible).
        """
        if self._pending_error is not None:
            await self._fail(str(self._pending_error))
            raise LinkDown(f"protocol error from {self.peer}: {self._pending_error}") from self._pending_error
        while True:
            try:
                event = self.session.next_event()
            except ProtocolError as exc:
                await self._fail(str(exc))
                raise LinkDown(f"protocol error from {self.peer}: {exc}") from exc
            self._pending_from_session()
            if event is not None:
                if isinstance(event, Error):
                    raise LinkDown(f"{self.peer} closed the session: {event.message}")
                return event
            if self._queue:
                await self.flush()
            with trio.move_on_after(idle_timeout if idle_timeout is not None else float("inf")) as scope:
                with _link_errors(f"receive from {self.peer}"):
                    data = await self._receive()
            if scope.cancelled_caught:
                raise LinkDown(f"{self.peer} silent for {idle_timeout:g}s")
            if data is not None:
                if not data:
                    raise LinkDown(f"{self.peer} closed the connection")
                self.session.receive_data(data)
            self._heard = True

    async def _receive(self) -> bytes | bytearray | None:
        """Bytes from the peer (``b""`` once it closed), or None when they
        went straight into the session's receive buffer (a large frame).

        On a socket, bytes already waiting are taken without a trip through
        the scheduler (trio's socket methods yield after every call, which
        costs a scheduler round per frame); one receive in ``_YIELD_EVERY``
        yields, so a busy link never starves the other tasks.

        Any other stream (TLS) hands out at most a record (16 KiB) per
        receive: the rest of a large frame is taken here in one loop rather
        than a trip through ``receive_event`` per record.

        Raises:
            OSError, trio.BrokenResourceError, trio.ClosedResourceError: the
                link failed or was closed.
        """
        # Before the session is open, no more than a handshake frame at once: an unauthenticated peer
        # cannot make us read (and hold) a megabyte.
        chunk = min(RECEIVE_CHUNK, self.session.frame_limit)
        sock = getattr(self.stream, "socket", None)
        if sock is None:
            into = self.session.receive_buffer()
            if into is None:
                return await self.stream.receive_some(chunk)
            while into is not None:
                data = await self.stream.receive_some(len(into))
                if not data:
                    return b""
                into[:len(data)] = data
                self.session.received(len(data))
                into = self.session.receive_buffer()
            return None
        self._receives += 1
        if self._receives % _YIELD_EVERY == 0:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            into = self.session.receive_buffer()
            try:
                if into is None:
                    return os.read(sock.fileno(), chunk)
                count = os.readv(sock.fileno(), [into])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if not count:
                return b""
            self.session.received(count)
            return None

    def next_buffered_event(self) -> Frame | None:
        """The next frame already received, without I/O (None if none).
        A protocol error is kept and raised by the next ``receive_event``."""
        if self._pending_error is not None:
            return None
        try:
            event = self.session.next_event()
        except ProtocolError as exc:
            self._pending_error = exc
            return None
        self._pending_error_check(event)
        return event

    def _pending_error_check(self, event: Frame | None) -> None:
        self._pending_from_session()
        if isinstance(event, Error):
            raise LinkDown(f"{self.peer} closed the session: {event.message}")

    async def _fail(self, reason: str) -> None:
        """Tell the peer why we drop it (best effort, bounded), then close.
        Logged as a warning once the peer has authenticated; before, the
        handshake's caller reports it (a peer that proved nothing must not
        be able to write a log line per connection)."""
        log.log(logging.WARNING if self.session.authenticated else logging.DEBUG,
                "dropping connection with %s: %s", self.peer, reason)
        message = reason.encode("utf-8")[:900].decode("utf-8", "ignore")
        with trio.move_on_after(1), contextlib.suppress(LinkDown):
            async with self._send_lock:
                with _link_errors(f"send to {self.peer}"):
                    await self.stream.send_all(encode(Error(message=message)))
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            with contextlib.suppress(Exception):
                await self.stream.aclose()


async def open_primary_connection(host: str, port: int, key: bytes, group_id: bytes,
                                  timeout: float,  # noqa: ASYNC109 - see below
                                  tls: ssl.SSLContext | None = None) -> tuple[Connection, Welcome]:
    """Connect, authenticate and return the open connection and the
    secondary's Welcome. *timeout* bounds the connect and the handshake
    (TLS's and the session's together) each, here and not in a caller's
    cancel scope, so that the error says which of them took too long.

    With *tls* (``client_context``) the session runs inside TLS, and the
    secondary's certificate must name *host*.

    Raises:
        LinkDown: the secondary cannot be reached, refused our TLS
            certificate or had one we refuse, or dropped us in time.
        AuthenticationError: the secondary does not hold our key.
    """
    peer = f"{host}:{port}"
    with trio.move_on_after(timeout) as scope:
        with _link_errors(f"cannot connect to secondary {peer}"):
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if scope.cancelled_caught:
        raise LinkDown(f"cannot connect to secondary {peer}: timed out after {timeout:g}s")
    _set_nodelay(stream)
    if tls is not None:
        stream = _wrap(stream, tls, server_hostname=host)
    session = PrimarySession(key, secrets.token_bytes(32), group_id)
    conn = Connection(stream, session, peer)
    stage = "TLS handshake" if tls is not None else "handshake"
    try:
        with trio.fail_after(timeout):
            if isinstance(stream, trio.SSLStream):
                await _tls_handshake(stream, f"TLS handshake with secondary {peer} failed")
                stage = "handshake"
            conn._queue.append(session.start())
            await conn.flush()
            event = await conn.receive_event()
            if not isinstance(event, Welcome):  # pragma: no cover - the table forbids it
                raise LinkDown(f"unexpected {type(event).__name__} during handshake")
    except trio.TooSlowError:
        await conn.aclose()
        raise LinkDown(f"secondary {peer} did not complete the {stage} within {timeout:g}s") from None
    except LinkDown as exc:
        await conn.aclose()
        if isinstance(exc.__cause__, AuthenticationError):
            raise exc.__cause__ from None
        if stage == "handshake" and not conn._heard:
            raise LinkDown(_unheard(peer, tls is not None)) from exc
        raise
    except BaseException:
        await conn.aclose()
        raise
    return conn, event


def _unheard(peer: str, tls: bool) -> str:
    """Why a secondary may drop a primary without a word, for the status."""
    if tls:
        return (f"secondary {peer} closed the connection right after the TLS handshake: it most likely refused "
                f"this primary's certificate; its log says why")
    return (f"secondary {peer} closed the connection before the handshake; its log says why (a secondary "
            f"started with --tls-cert, --tls-key and --tls-ca does this to a primary without them)")


async def accept_secondary_session(stream: trio.abc.Stream, key: bytes, peer: str,
                                   timeout: float,  # noqa: ASYNC109 - see below
                                   tls: ssl.SSLContext | None = None) -> tuple[Connection, bytes]:
    """Run the secondary's half of the handshake on an accepted stream,
    within *timeout* (here, so that the error names the handshake). With
    *tls* (``server_context``) the TLS handshake comes first, inside the
    same timeout: a peer without a certificate of the CA never gets a
    frame read.

    Returns the connection in state AUTHENTICATED and the group id; the
    caller opens the replica and sends Welcome.

    Raises:
        LinkDown: the peer failed TLS or authentication, broke the
            protocol, or was too slow; the connection is closed and nothing
            was applied.
    """
    _set_nodelay(stream)
    if tls is not None:
        stream = _wrap(stream, tls)
    session = SecondarySession(key, secrets.token_bytes(32))
    conn = Connection(stream, session, peer)
    stage = "complete the TLS handshake" if tls is not None else "authenticate"
    try:
        with trio.fail_after(timeout):
            if isinstance(stream, trio.SSLStream):
                await _tls_handshake(stream, "TLS handshake failed")
                stage = "authenticate"
            await conn.receive_event()
    except trio.TooSlowError:
        await conn.aclose()
        raise LinkDown(f"{peer} did not {stage} within {timeout:g}s") from None
    except BaseException:
        await conn.aclose()
        raise
    assert session.group_id is not None
    return conn, session.group_id


def _wrap(stream: trio.abc.Stream, tls: ssl.SSLContext, *, server_hostname: str | None = None) -> trio.SSLStream:
    """TLS over *stream* (over its socket directly, when it has one).
    ``https_compatible``: closing does not wait on the peer's close_notify
    (a peer that never finished its handshake would hold the close), and
    the session's own Close frames, not TLS's, say whether a session ended
    cleanly."""
    if isinstance(stream, trio.SocketStream):
        stream = _SocketTransport(stream)
    return trio.SSLStream(stream, tls, server_side=server_hostname is None, server_hostname=server_hostname,
                          https_compatible=True)


class _SocketTransport(trio.abc.Stream):
    """A SocketStream's socket under an SSLStream, read and written without
    the scheduler round that trio's socket methods take after every call
    (the fast paths of ``Connection``, for the ciphertext): SSLStream's own
    locks already yield once per send and per refill, and trio's socket
    stream under them made a 4 KiB write's round trip to a secondary about
    2.5 times as slow (4.0 ms against 1.6 ms, on a busy host).

    Errors are trio's: BrokenResourceError from the OSError, as SocketStream
    gives them.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._sock = stream.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        with _broken_on_os_error():
            while view:
                try:
                    view = view[os.write(self._sock.fileno(), view):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self._sock)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        with _broken_on_os_error():
            while True:
                try:
                    return os.read(self._sock.fileno(), max_bytes or RECEIVE_CHUNK)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(self._sock)

    async def aclose(self) -> None:
        await self._stream.aclose()


@contextlib.contextmanager
def _broken_on_os_error() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket: {exc.strerror or exc}") from exc


async def _tls_handshake(stream: trio.SSLStream, failed: str) -> None:
    """Raises:
        LinkDown: *failed*, and why (one line).
    """
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        reason = failure(exc) or CLOSED
        if reason == CLOSED:
            reason += " (it may have refused this host's certificate; its log says why)"
        raise LinkDown(f"{failed}: {reason}") from exc


SOCKET_BUFFER = 8 * 1024 * 1024


def _set_nodelay(stream: trio.abc.Stream) -> None:
    """No Nagle delay for small frames (acks, metadata), and socket buffers
    large enough to hold several 1 MiB writes in flight."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        import socket
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
