"""The link of one group to its secondary: connect and authenticate,
back off and retry, and while connected run the session — the sender, the
reader, the pinger of an idle link and the ack watchdog.

What the frames mean is the owner's (the relationship): the link hands it
the Welcome, every frame received and every loss, and lets it start its
own tasks for the session (the resync scheduler's). The link outlives any
one failure: an attempt or a session that fails in any way costs a
reconnect, never the mount.

Owned by ``async with link.running():``, which keeps it linked until the
block ends or ``close()`` is called.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import trio

import transport as tp

log = logging.getLogger(__name__)
STABLE_SESSION = 10.0  # a session that lasted this long resets the backoff


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    ack: float = 10.0
    ping: float = 2.0
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    resync_stall: float = 60.0  # no progress for this long: the resync is restarted
    async_interval: float = 5.0  # policy async: how often dirty regions are shipped


DEFAULT_TIMEOUTS = Timeouts()


class LinkOwner(Protocol):
    def connected(self, conn: tp.Connection, welcome: tp.Welcome) -> None:
        """A session is authenticated: judge the replica."""

    def received(self, conn: tp.Connection, event: tp.Frame) -> None:
        """A frame from the secondary. Raises LinkDown to end the session."""

    def overdue(self, now: float) -> bool:
        """Whether something waits for an ack longer than the ack timeout."""

    def link_lost(self, reason: str) -> None:
        """The session ended: fail what is in flight (never checkpoints)."""

    def start_session_tasks(self, nursery: trio.Nursery) -> None:
        """Start what runs only while connected."""


class Link:
    """Connection management for one group."""

    def __init__(self, owner: LinkOwner, name: str, address: tuple[str, int], key: bytes, group_id: bytes,
                 timeouts: Timeouts, tls: ssl.SSLContext | None = None) -> None:
        self._owner = owner
        self._name = name
        self.host, self.port = address
        self._key = key
        self._group_id = group_id
        self._tls = tls
        self.timeouts = timeouts
        self.conn: tp.Connection | None = None
        self.last_error = ""
        self.established = 0  # sessions authenticated and judged by the owner (status counts the reconnects)
        self.closing = False
        self._session_scope: trio.CancelScope | None = None
        self._reconnect_wakeup = trio.Event()  # cuts a backoff short (reconnect_now)
        self._attempted = trio.Event()  # set after each connection attempt
        self._stopped = trio.Event()

    def reopened(self) -> Link:
        """A new link to the same secondary, for an owner whose link was
        closed (a group taken back after a move that never finished)."""
        return Link(self._owner, self._name, (self.host, self.port), self._key, self._group_id, self.timeouts,
                    self._tls)

    @property
    def peer(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    async def connect(self) -> None:
        """One attempt to connect and authenticate; the owner judges the
        replica before this returns.

        Raises:
            AuthenticationError: the secondary does not hold our key.
            LinkDown: it could not be reached.
        """
        conn, welcome = await tp.open_primary_connection(
            self.host, self.port, self._key, self._group_id, self.timeouts.connect, tls=self._tls)
        self.conn = conn
        self.last_error = ""
        try:
            self._owner.connected(conn, welcome)
        except BaseException:
            self.conn = None
            with trio.CancelScope(shield=True):
                await conn.aclose()
            raise
        self.established += 1

    def drop(self) -> None:
        """End the current session (the owner has failed what was in
        flight already). Never checkpoints."""
        self.conn = None
        if self._session_scope is not None:
            self._session_scope.cancel()

    def close(self) -> None:
        """Stop reconnecting; the running block ends with the session."""
        self.closing = True
        self.drop()
        self._reconnect_wakeup.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Keep the link up while the block runs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_linked)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()

    async def stopped(self) -> None:
        """Wait until ``close()`` ended the link."""
        await self._stopped.wait()

    async def reconnect_now(self) -> None:
        """Try the secondary at once rather than at the end of the backoff
        (the operator says it is back); return when that attempt has ended."""
        if self.conn is not None or self.closing:
            return
        attempted = self._attempted
        self._reconnect_wakeup.set()
        with trio.move_on_after(self.timeouts.connect + 1):
            await attempted.wait()

    async def _back_off(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._reconnect_wakeup.wait()
        self._reconnect_wakeup = trio.Event()

    async def _attempt(self) -> None:
        try:
            await self.connect()
        except tp.AuthenticationError as exc:
            self.last_error = str(exc)
            log.error("group %s: %s", self._name, exc)
        except tp.LinkDown as exc:
            if str(exc) != self.last_error:
                log.info("group %s: reconnect failed: %s", self._name, exc)
            self.last_error = str(exc)
        except Exception as exc:  # one failed attempt must cost a retry, not the mount
            log.exception("group %s: internal error while connecting to %s", self._name, self.peer)
            self.last_error = f"internal error while connecting: {exc!r}"
        finally:
            self._attempted.set()
            self._attempted = trio.Event()

    async def _keep_linked(self) -> None:
        backoff = self.timeouts.backoff_min
        try:
            while not self.closing:
                if self.conn is None:
                    await self._attempt()
                    if self.conn is None:
                        await self._back_off(backoff)
                        backoff = min(backoff * 2, self.timeouts.backoff_max)
                        continue
                started = trio.current_time()
                try:
                    await self._run_session(self.conn)
                except Exception as exc:  # a bug must cost a reconnect, not the mount
                    log.exception("group %s: internal error in the replication session", self._name)
                    self._owner.link_lost(f"internal error: {exc!r}")
                if trio.current_time() - started > STABLE_SESSION:
                    backoff = self.timeouts.backoff_min
                elif not self.closing:
                    await self._back_off(backoff)
                    backoff = min(backoff * 2, self.timeouts.backoff_max)
        finally:
            self._stopped.set()

    async def _run_session(self, conn: tp.Connection) -> None:
        try:
            with trio.CancelScope() as self._session_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.serve_sender)
                    nursery.start_soon(self._pinger, conn)
                    nursery.start_soon(self._watchdog)
                    self._owner.start_session_tasks(nursery)
                    await self._reader(conn)
                    nursery.cancel_scope.cancel()
        except* tp.LinkDown as group:
            self._owner.link_lost(str(tp.first_error(group)))
        finally:
            self._session_scope = None
            if self.conn is conn and not self.closing:
                self._owner.link_lost("session ended")
            await conn.aclose()

    async def _reader(self, conn: tp.Connection) -> None:
        idle = max(self.timeouts.ack, 3 * self.timeouts.ping)
        while True:
            event = await conn.receive_event(idle_timeout=idle)
            if isinstance(event, tp.Ping):
                conn.enqueue(tp.Pong(token=event.token))
            elif isinstance(event, tp.Close):
                if self.closing:
                    return
                raise tp.LinkDown("secondary closed the session")
            else:
                self._owner.received(conn, event)

    async def _pinger(self, conn: tp.Connection) -> None:
        while True:
            await trio.sleep(self.timeouts.ping)
            conn.enqueue(tp.Ping(token=0))

    async def _watchdog(self) -> None:
        step = min(0.25, self.timeouts.ack / 4)
        while True:
            await trio.sleep(step)
            if self._owner.overdue(trio.current_time()):
                raise tp.LinkDown(f"no acknowledgement for {self.timeouts.ack:g}s")
