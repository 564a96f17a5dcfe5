"""A TCP proxy that breaks the link on command, for the link-fault tests.

How this works: ``FaultProxy`` runs its own ``trio.run`` in a background
thread, listens on 127.0.0.1 (any free port) and opens one connection to the
target for each connection it accepts. Each direction of a connection is a
reader task and a writer task joined by a bounded memory channel: the reader
stamps each chunk with the time it may leave (now + the delay), the writer
waits for that time and for the link to flow, then sends it. One writer per
direction keeps the bytes in order whatever the faults.

The test thread controls the proxy through ``trio.from_thread`` with the
loop's token, so every operation is thread-safe and has taken effect when it
returns: after ``cut()`` every connection is closed; after ``stall()`` no
writer starts sending another chunk.

Caveats:
- A stall holds at most ``HELD_CHUNKS`` chunks per direction in the proxy;
  the rest waits in the kernel's socket buffers, then the peers block.
- A chunk whose send had already begun when ``stall()`` was called still
  goes out (at most one per direction).
- ``cut()`` closes both sockets of each connection (FIN, not a silent drop);
  what the proxy held is discarded, as on a real broken link.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import trio

CHUNK = 64 * 1024
HELD_CHUNKS = 64  # per direction: what a stall or a delay may hold before the reader stops reading
CONNECT_TIMEOUT = 5.0  # to the target
CONTROL_TIMEOUT = 10.0  # for an operation of the control API to take effect
START_TIMEOUT = 10.0
JOIN_TIMEOUT = 10.0
HOST = "127.0.0.1"

T = TypeVar("T")
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class ProxyError(Exception):
    """Raised by any operation when the proxy's thread failed or did not
    start or stop in time; the cause is the thread's own exception."""


@dataclass(eq=False)
class _Link:
    """One proxied connection: its cancel scope and when it has closed."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class FaultProxy:
    """Forward TCP connections from ``address`` to *target*, with faults.

    Args:
        target: ``"host:port"`` or ``(host, port)`` to forward to.
    Raises:
        ProxyError: the proxy could not start listening.

    Usable as a context manager; ``close()`` stops it either way.
    """

    def __init__(self, target: str | tuple[str, int]) -> None:
        if isinstance(target, str):
            host, _, port = target.rpartition(":")
            target = (host.strip("[]"), int(port))
        self.target = target
        self._port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._main_scope: trio.CancelScope | None = None
        self._links: set[_Link] = set()
        self._accepted = 0
        self._cut = False
        self._flowing: trio.Event | None = None
        self._delay = 0.0
        self._to_secondary = 0
        self._to_primary = 0
        self._error: BaseException | None = None
        self._closed = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy->{target[0]}:{target[1]}", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT):
            raise ProxyError(f"the proxy to {self.target} did not start within {START_TIMEOUT:g}s")
        if self._error is not None:
            self._thread.join(JOIN_TIMEOUT)
            raise ProxyError(f"the proxy to {self.target} failed to start: {self._error!r}") from self._error

    # --- the control API (any thread but the proxy's) ------------------------------------

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``: where to connect instead of the target."""
        return f"{HOST}:{self._port}"

    def cut(self) -> None:
        """Close every current connection both ways and refuse new ones
        (accepted, then closed at once) until ``restore()``. Returns once
        every connection is closed."""
        self._call(self._cut_all)

    def stall(self) -> None:
        """Keep connections open (and accept new ones) but forward no more
        bytes until ``restore()``, which forwards what was held, in order."""
        self._call_sync(self._stall)

    def delay(self, seconds: float) -> None:
        """Hold each chunk read from now on *seconds* before forwarding it,
        in both directions; order is kept. ``delay(0)`` removes it."""
        if seconds < 0:
            raise ValueError(f"a delay cannot be negative: {seconds!r}")
        self._call_sync(setattr, self, "_delay", float(seconds))

    def restore(self) -> None:
        """Back to a healthy link: accept and forward again, release what a
        stall held, and remove any delay."""
        self._call_sync(self._restore)

    @property
    def bytes_to_secondary(self) -> int:
        """Bytes forwarded to the target (handed to its socket) since the
        start or the last ``reset_counters()``."""
        return self._call_sync(lambda: self._to_secondary)

    @property
    def bytes_to_primary(self) -> int:
        """Bytes forwarded back to the connecting side, likewise."""
        return self._call_sync(lambda: self._to_primary)

    @property
    def connections(self) -> int:
        """Connections open (or being opened) through the proxy."""
        return self._call_sync(lambda: len(self._links))

    @property
    def accepted(self) -> int:
        """Connections accepted since the start, those closed at once
        during a cut included: the primary's connection attempts."""
        return self._call_sync(lambda: self._accepted)

    def reset_counters(self) -> None:
        self._call_sync(self._reset_counters)

    def close(self) -> None:
        """Close every connection and the listener and join the thread.
        Safe to call again.

        Raises:
            ProxyError: the thread failed at some point, or did not stop.
        """
        if not self._closed:
            self._closed = True
            if self._token is not None and self._main_scope is not None:
                try:
                    trio.from_thread.run_sync(self._main_scope.cancel, trio_token=self._token)
                except trio.RunFinishedError:
                    pass
            self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            raise ProxyError(f"the proxy to {self.target} did not stop within {JOIN_TIMEOUT:g}s")
        if self._error is not None:
            raise ProxyError(f"the proxy to {self.target} failed: {self._error!r}") from self._error

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FaultProxy {self.address} -> {self.target[0]}:{self.target[1]}>"

    def _call_sync(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_usable()
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise ProxyError(f"the proxy to {self.target} has stopped: {self._error!r}") from self._error

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        self._check_usable()
        try:
            return trio.from_thread.run(fn, trio_token=self._token)
        except trio.RunFinishedError:
            raise ProxyError(f"the proxy to {self.target} has stopped: {self._error!r}") from self._error

    def _check_usable(self) -> None:
        if self._closed:
            raise ProxyError(f"the proxy to {self.target} is closed")
        if self._error is not None:
            raise ProxyError(f"the proxy to {self.target} failed: {self._error!r}") from self._error

    # --- the proxy's thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # kept for the test thread: close() and every call raise it
            self._error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host=HOST)
        try:
            self._port = listeners[0].socket.getsockname()[1]
            self._token = trio.lowlevel.current_trio_token()
            self._flowing = trio.Event()
            self._flowing.set()
            async with trio.open_nursery() as nursery:
                self._main_scope = nursery.cancel_scope
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                self._started.set()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    async def _cut_all(self) -> None:
        self._cut = True
        links = list(self._links)
        for link in links:
            link.scope.cancel()
        with trio.fail_after(CONTROL_TIMEOUT):
            for link in links:
                await link.done.wait()

    def _stall(self) -> None:
        assert self._flowing is not None
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def _restore(self) -> None:
        assert self._flowing is not None
        self._cut = False
        self._delay = 0.0
        self._flowing.set()

    def _reset_counters(self) -> None:
        self._to_secondary = self._to_primary = 0

    async def _wait_flowing(self) -> None:
        # A stall swaps in a new, unset event; restore() sets the current one.
        while self._flowing is not None and not self._flowing.is_set():
            await self._flowing.wait()

    async def _handle(self, client: trio.SocketStream) -> None:
        """One accepted connection, until either side closes it or a cut."""
        self._accepted += 1
        if self._cut:
            await client.aclose()
            return
        link = _Link()
        self._links.add(link)
        server: trio.SocketStream | None = None
        try:
            with link.scope:
                with trio.move_on_after(CONNECT_TIMEOUT):
                    try:
                        server = await trio.open_tcp_stream(*self.target)
                    except OSError:
                        return  # the target is down: the client sees its connection closed
                if server is None:
                    return
                for stream in (client, server):
                    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, True, link)
                    nursery.start_soon(self._pump, server, client, False, link)
        finally:
            self._links.discard(link)
            with trio.CancelScope(shield=True):
                await client.aclose()
                if server is not None:
                    await server.aclose()
            link.done.set()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, to_secondary: bool, link: _Link) -> None:
        """One direction. A reset or close on either side ends the whole
        connection; an orderly end of stream is passed on as one."""
        send_held, receive_held = trio.open_memory_channel[tuple[float, bytes]](HELD_CHUNKS)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read, src, send_held)
                await self._write(dst, receive_held, to_secondary)
        except* _STREAM_ERRORS:
            link.scope.cancel()

    async def _read(self, src: trio.SocketStream, held: trio.MemorySendChannel[tuple[float, bytes]]) -> None:
        async with held:
            while True:  # until end of stream, a stream error, or cancellation
                data = await src.receive_some(CHUNK)
                if not data:
                    return
                await held.send((trio.current_time() + self._delay, data))

    async def _write(self, dst: trio.SocketStream, held: trio.MemoryReceiveChannel[tuple[float, bytes]],
                     to_secondary: bool) -> None:
        async with held:
            async for due, data in held:
                await trio.sleep_until(due)
                await self._wait_flowing()
                # Counted before the send: whatever the peer has received is counted already.
                if to_secondary:
                    self._to_secondary += len(data)
                else:
                    self._to_primary += len(data)
                await dst.send_all(data)
        await self._wait_flowing()
        await dst.send_eof()
