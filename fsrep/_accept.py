"""Accepting connections from peers that have proved nothing yet.

How this works: ``serve_listeners`` accepts every connection as soon as it
arrives, so the listen backlog never fills and the real primary's
connection always reaches the daemon, and ``Handshakes.admit`` gives it a
slot while it authenticates. Slots are capped per source address (an IPv6
/64 counts as one address) and in all; when a cap is reached the newcomer
takes the slot of the oldest handshake of the busiest address (its own, at
the per-address cap), which is closed. An honest handshake takes a couple
of round trips, so only connections that sit idle lose their slot, and a
flood from some addresses cannot keep a primary from another one out. The
handler runs its handshake inside the ``Handshake`` it is given (a cancel
scope) and leaves it once the peer has authenticated; from then on the
connection counts no more.

Accept errors that say the process or the system ran out of something
(EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting briefly, as
``trio.serve_listeners`` does, and like everything else a peer can cause at
will (closed and failed handshakes) they are logged once per
REPORT_INTERVAL with a count, never a line or a traceback each.

Caveats:
- Peers on one address share its slots: a flood from the primary's own
  host can still push the primary's handshake out if it opens
  MAX_HANDSHAKES_PER_ADDRESS connections while that handshake is under way.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import resource
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio

log = logging.getLogger(__name__)

# In all, at most this many connections authenticate at once, and never more than a quarter of the open-file
# limit: the sessions, the replicas' files and the checkpoints always find descriptors left.
MAX_HANDSHAKES = 256
FILES_PER_HANDSHAKE = 4
# A mount connects all its groups at once, one connection each, so several handshakes from one address are
# normal; beyond this many a mount's extra groups retry after their backoff.
MAX_HANDSHAKES_PER_ADDRESS = 32
IPV6_PREFIX = 64  # what one host (or one attacker) usually holds
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE = 0.1  # as trio.serve_listeners: time for handlers to finish and free what accept needs
REPORT_INTERVAL = 10.0


def handshake_cap() -> int:
    """How many connections may authenticate at once, from the open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_HANDSHAKES
    return max(1, min(MAX_HANDSHAKES, soft // FILES_PER_HANDSHAKE))


def address_key(host: str) -> str:
    """The address a peer's slots are counted under: the IPv4 address
    (also when mapped into IPv6), or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class Tally:
    """A recurring event logged at most once per REPORT_INTERVAL: the first
    at once, the rest as one line with their count when the interval is
    over (at the next event or ``report``)."""

    def __init__(self, level: int, what: str) -> None:
        self.level, self.what = level, what
        self.count = 0  # not logged yet
        self._latest = ""
        self._quiet_until = -math.inf

    def note(self, detail: str, now: float) -> None:
        self.report(now)
        if now >= self._quiet_until:
            log.log(self.level, "%s: %s", self.what, detail)
            self._quiet_until = now + REPORT_INTERVAL
        else:
            self.count += 1
            self._latest = detail

    def report(self, now: float) -> None:
        if self.count and now >= self._quiet_until:
            log.log(self.level, "%s: %d more in the last %gs (the latest: %s)", self.what, self.count,
                    REPORT_INTERVAL, self._latest)
            self.count = 0
            self._quiet_until = now + REPORT_INTERVAL


class Handshake:
    """One connection's slot while it authenticates. Run the handshake in
    it (``with handshake:``); leaving it frees the slot. If a newer
    connection needs the slot, the handshake is cancelled (``evicted``)."""

    def __init__(self, owner: Handshakes, peer: str, key: str) -> None:
        self.peer, self.key = peer, key
        self._owner = owner
        self._scope = trio.CancelScope()

    @property
    def evicted(self) -> bool:
        return self._scope.cancel_called

    def evict(self) -> None:
        self._scope.cancel()

    def __enter__(self) -> Handshake:
        self._scope.__enter__()
        return self

    def __exit__(self, etype: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._owner.release(self)
        return self._scope.__exit__(etype, exc, tb)


class Handshakes:
    """The connections still authenticating, by address and in all, and
    the tallies of what peers did to the accept loop."""

    def __init__(self, total: int | None = None, per_address: int = MAX_HANDSHAKES_PER_ADDRESS) -> None:
        self.total = handshake_cap() if total is None else total
        self.per_address = per_address
        self._count = 0
        self._by_address: dict[str, dict[Handshake, None]] = {}  # each address's, oldest first
        self.accept_errors = Tally(logging.ERROR, "accept failed")
        self.evictions = Tally(logging.WARNING, "closed a connection still authenticating to make room")
        self.failures = Tally(logging.WARNING, "refused a peer that did not authenticate")

    @property
    def under_way(self) -> int:
        return self._count

    def admit(self, host: str, port: int) -> Handshake:
        """A slot for a new connection from *host*; the oldest handshake of
        the busiest address gives up its own if a cap is reached."""
        key = address_key(host)
        mine = self._by_address.get(key, {})
        if len(mine) >= self.per_address:
            self._evict(key, f"{self.per_address} from {key} were authenticating")
        elif self._count >= self.total:
            busiest = max(self._by_address, key=lambda k: len(self._by_address[k]))
            self._evict(busiest, f"{self.total} were authenticating")
        handshake = Handshake(self, f"{host}:{port}", key)
        self._by_address.setdefault(key, {})[handshake] = None
        self._count += 1
        return handshake

    def release(self, handshake: Handshake) -> None:
        """Free *handshake*'s slot (again is harmless)."""
        mine = self._by_address.get(handshake.key)
        if mine is None or handshake not in mine:
            return
        del mine[handshake]
        if not mine:
            del self._by_address[handshake.key]
        self._count -= 1

    def failed(self, peer: str, reason: str) -> None:
        self.failures.note(f"{peer}: {reason}", trio.current_time())

    def report(self) -> None:
        now = trio.current_time()
        for tally in (self.accept_errors, self.evictions, self.failures):
            tally.report(now)

    def _evict(self, key: str, why: str) -> None:
        oldest = next(iter(self._by_address[key]))
        oldest.evict()
        self.release(oldest)
        self.evictions.note(f"{oldest.peer} ({why})", trio.current_time())


Handler = Callable[[trio.SocketStream, Handshake], Awaitable[object]]


async def serve_listeners(handler: Handler, listeners: list[trio.SocketListener], handshakes: Handshakes, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Accept on every listener until cancelled and run ``handler(stream,
    handshake)`` for each connection in a task of its own; the stream is
    closed when the handler returns. Closes the listeners at the end."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_periodically, handshakes)
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, handshakes, nursery)
        task_status.started()


async def _accept_loop(listener: trio.SocketListener, handler: Handler, handshakes: Handshakes,
                       nursery: trio.Nursery) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                handshakes.accept_errors.note(f"{errno.errorcode[exc.errno]} ({os.strerror(exc.errno)}); "
                                              f"accepting again in {ACCEPT_PAUSE:g}s", trio.current_time())
                await trio.sleep(ACCEPT_PAUSE)
                continue
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:  # gone already
                await trio.aclose_forcefully(stream)
                continue
            nursery.start_soon(_run_handler, handler, stream, handshakes, handshakes.admit(host, port))


async def _run_handler(handler: Handler, stream: trio.SocketStream, handshakes: Handshakes,
                       handshake: Handshake) -> None:
    try:
        await handler(stream, handshake)
    finally:
        handshakes.release(handshake)
        await trio.aclose_forcefully(stream)


async def _report_periodically(handshakes: Handshakes) -> None:
    while True:
        await trio.sleep(REPORT_INTERVAL)
        handshakes.report()
