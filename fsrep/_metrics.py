"""``--metrics HOST:PORT``: a daemon's state in the Prometheus text format,
served over HTTP from the daemon's own event loop.

How this works: every scrape builds the exposition anew from the status
the daemon keeps — each group's ``Relationship.statistics()`` (what
``fsrep status`` shows) and its write latency histogram on a mount, each
replica's position and counters on a secondary. It is read on the trio
thread, where that state changes; prometheus_client's own server would
read it from a thread of its own, between two halves of an update.
prometheus_client only formats: a registry with one collector, rendered
by ``generate_latest``.

The HTTP side is the least a scraper needs: one ``GET`` per connection,
answered and closed. A peer gets ``MAX_HEAD`` bytes and ``TIMEOUT``
seconds for the whole exchange, and at most ``MAX_CONNECTIONS`` are served
at once (more are closed at once): a client that sends without end or
never sends costs a bounded buffer for a bounded time, never a task that
lives on.

Metric names are an interface (dashboards and alerts use them): renaming
one breaks them, as renaming a field of ``fsrep status --json`` does.

Caveats:
- No TLS and no authentication: bind to an address only the Prometheus
  server reaches (the data is state, not file contents).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from ._config import ConfigError
from ._latency import Latencies
from ._state import RelationshipState
from ._status import GroupStatus

if TYPE_CHECKING:
    from ._groups import Groups
    from ._secondary import Replica, Secondary

log = logging.getLogger(__name__)

# What generate_latest writes. prometheus_client's CONTENT_TYPE_LATEST names text format 1.0.0 in recent
# releases; for names like these (no characters that need escaping) the body is the same, and 0.0.4 is what
# every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8 * 1024  # bytes of a request's head; a scraper's is a few hundred
TIMEOUT = 5.0  # seconds for one whole exchange: the head received, the answer sent
MAX_CONNECTIONS = 8  # served at once; Prometheus scrapes one at a time

GROUP_LABELS = ("group", "path")
Read = Callable[[GroupStatus, float], float]

# (name, help, value of a group's status at a time in seconds since the epoch)
GROUP_GAUGES: tuple[tuple[str, str, Read], ...] = (
    ("fsrep_group_connected", "1 while a session with the group's secondary is up",
     lambda s, now: float(s.connected)),
    ("fsrep_group_lag_ops", "changes sent to the secondary and not yet acknowledged",
     lambda s, now: s.ops_in_flight),
    ("fsrep_group_lag_bytes", "bytes the replica lacks: in flight, plus what is dirty while the replica is stale",
     lambda s, now: s.lag_bytes),
    ("fsrep_group_lag_seconds", "how long the replica has been missing changes made here",
     lambda s, now: s.lag_seconds),
    ("fsrep_group_dirty_bytes", "bytes that may differ between primary and replica (the dirty set)",
     lambda s, now: s.dirty_bytes),
    ("fsrep_group_resync_bytes_remaining", "what the running resync has left to move, else what one would move",
     lambda s, now: s.bytes_remaining),
    ("fsrep_group_resync_bytes_per_second", "the data rate of the last resync run",
     lambda s, now: s.bytes_per_second),
    ("fsrep_group_resync_eta_seconds", "when the running resync should end; NaN while not known",
     lambda s, now: math.nan if s.eta_seconds is None else s.eta_seconds),
    ("fsrep_group_snapshot_age_seconds", "age of the newest snapshot both sides hold; NaN when there is none",
     lambda s, now: math.nan if s.snapshot is None else max(0.0, now - s.snapshot.created)),
)
GROUP_COUNTERS: tuple[tuple[str, str, Read], ...] = (
    ("fsrep_group_reconnects_total", "sessions with the secondary established after the first one of this mount",
     lambda s, now: s.reconnects),
    ("fsrep_group_sent_bytes_total", "file data put on the link: replicated changes and resyncs",
     lambda s, now: s.bytes_sent),
    ("fsrep_group_resync_bytes_sent_total", "file data resyncs of this mount sent",
     lambda s, now: s.resync_bytes_sent),
    ("fsrep_group_bytes_cloned_total", "data of files cloned here, which each side copied on its own",
     lambda s, now: s.bytes_cloned),
)
STATE = "fsrep_group_state"
WRITE_LATENCY = "fsrep_group_write_latency_seconds"


@dataclass(frozen=True, slots=True)
class ReplicaMetrics:
    """What a secondary exposes of one replica."""

    group: str
    last_applied_seq: int
    connected: bool  # a primary's session holds the replica
    frames_applied: int  # changes applied since the daemon started
    bytes_applied: int  # their file data

    @classmethod
    def of(cls, replica: Replica) -> ReplicaMetrics:
        return cls(replica.id, replica.last_applied, replica.session is not None, replica.frames_applied,
                   replica.bytes_applied)


REPLICA_GAUGES: tuple[tuple[str, str, Callable[[ReplicaMetrics], float]], ...] = (
    ("fsrep_replica_last_applied_seq", "the sequence number of the last change applied to the replica",
     lambda r: r.last_applied_seq),
    ("fsrep_replica_connected", "1 while a primary's session holds the replica", lambda r: float(r.connected)),
)
REPLICA_COUNTERS: tuple[tuple[str, str, Callable[[ReplicaMetrics], float]], ...] = (
    ("fsrep_replica_frames_applied_total", "changes applied to the replica since the daemon started",
     lambda r: r.frames_applied),
    ("fsrep_replica_bytes_applied_total", "file data of those changes", lambda r: r.bytes_applied),
)


# --- the exposition -------------------------------------------------------------


def group_families(groups: Iterable[tuple[GroupStatus, Latencies]], now: float) -> list[Metric]:
    """The metric families of a mount's groups, as they stand at *now*
    (seconds since the epoch): one series per group in each."""
    state = GaugeMetricFamily(STATE, "1 for the group's relationship state, 0 for every other",
                              labels=(*GROUP_LABELS, "state"))
    series: list[tuple[GaugeMetricFamily | CounterMetricFamily, Read]] = [
        *((GaugeMetricFamily(name, doc, labels=GROUP_LABELS), read) for name, doc, read in GROUP_GAUGES),
        *((CounterMetricFamily(name, doc, labels=GROUP_LABELS), read) for name, doc, read in GROUP_COUNTERS)]
    latency = HistogramMetricFamily(WRITE_LATENCY, "how long a client's change waited from the split to the "
                                                   "secondary's acknowledgement", labels=GROUP_LABELS)
    for status, latencies in groups:
        labels = [status.id, status.path]
        for name in RelationshipState:
            state.add_metric([*labels, name.value], float(name.value == status.state))
        for family, read in series:
            family.add_metric(labels, float(read(status, now)))
        latency.add_metric(labels, [(floatToGoString(bound), count) for bound, count in latencies.buckets()],
                           latencies.sum)
    return [state, *(family for family, _ in series), latency]


def replica_families(replicas: Iterable[ReplicaMetrics]) -> list[Metric]:
    """The metric families of a secondary's replicas: one series per replica."""
    series: list[tuple[GaugeMetricFamily | CounterMetricFamily, Callable[[ReplicaMetrics], float]]] = [
        *((GaugeMetricFamily(name, doc, labels=("group",)), read) for name, doc, read in REPLICA_GAUGES),
        *((CounterMetricFamily(name, doc, labels=("group",)), read) for name, doc, read in REPLICA_COUNTERS)]
    for replica in replicas:
        for family, read in series:
            family.add_metric([replica.group], float(read(replica)))
    return [family for family, _ in series]


class _Families:
    """The registry's one collector: what *read* builds at each scrape."""

    def __init__(self, read: Callable[[], list[Metric]]) -> None:
        self._read = read

    def collect(self) -> list[Metric]:
        return self._read()


def exposition(read: Callable[[], list[Metric]]) -> Callable[[], bytes]:
    """A function that renders what *read* builds, in the text format.
    Call it on the thread where what *read* reads changes."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(read))
    return functools.partial(generate_latest, registry)


def of_mount(groups: Groups) -> Callable[[], bytes]:
    """The exposition of a mount's groups (``fsrep mount --metrics``)."""
    return exposition(lambda: group_families(((g.rel.statistics(), g.rel.write_latency) for g in groups.all),
                                             time.time()))


def of_secondary(secondary: Secondary) -> Callable[[], bytes]:
    """The exposition of a secondary's replicas (``fsrep serve --metrics``)."""
    return exposition(lambda: replica_families(ReplicaMetrics.of(r) for r in list(secondary.replicas.values())))


# --- HTTP --------------------------------------------------------------------------


def shown(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_metrics(address: tuple[str, int]) -> list[trio.SocketListener]:
    """Bind *address* for ``serve_metrics`` — early, so that a daemon that
    cannot serve its metrics refuses to start before it mounts or listens.

    Raises:
        ConfigError: the address cannot be bound (in use, not this host's).
    """
    host, port = address
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {shown(address)}: {exc.strerror or exc}") from None


async def serve_metrics(listeners: list[trio.SocketListener], render: Callable[[], bytes], *,
                        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer scrapes on *listeners* with *render()* until cancelled."""
    bound = listeners[0].socket.getsockname()
    log.info("serving Prometheus metrics on http://%s/metrics", shown((bound[0], bound[1])))
    slots = trio.CapacityLimiter(MAX_CONNECTIONS)
    await trio.serve_listeners(functools.partial(_connection, render=render, slots=slots), listeners,
                               task_status=task_status)


async def _connection(stream: trio.SocketStream, *, render: Callable[[], bytes], slots: trio.CapacityLimiter) -> None:
    """One scrape: never raises, or the server (and the daemon) would stop."""
    async with stream:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            log.debug("metrics: %d connections at once already; closed another", MAX_CONNECTIONS)
            return
        try:
            with trio.move_on_after(TIMEOUT) as scope:
                head = await read_head(stream)
                if head is not None:
                    await stream.send_all(answer(head, render))
            if scope.cancelled_caught:
                log.debug("metrics: a peer took more than %gs; dropped it", TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("metrics: a peer went away: %s", exc)
        except Exception:
            log.exception("metrics: internal error answering a scrape")
        finally:
            slots.release()


async def read_head(stream: trio.abc.ReceiveStream) -> bytes | None:
    """A request's head, up to the blank line that ends it; None when the
    peer closes first or sends MAX_HEAD bytes without one."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")  # a hand-typed request
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) >= MAX_HEAD:
            log.debug("metrics: a request head longer than %d bytes; dropped it", MAX_HEAD)
            return None
        data = await stream.receive_some(MAX_HEAD - len(buf))
        if not data:
            return None
        buf += data


def answer(head: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole response to a request with *head*: the metrics for
    ``GET /metrics`` (or ``/``), else why not."""
    parts = head.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response("400 Bad Request", b"not an HTTP request\n")
    method, target = parts[0], parts[1].split(b"?", 1)[0]
    if target not in (b"/metrics", b"/"):
        return _response("404 Not Found", b"the metrics are at /metrics\n")
    if method != b"GET":
        return _response("405 Method Not Allowed", b"only GET\n", "Allow: GET\r\n")
    try:
        body = render()
    except Exception:  # a bug reading the status must cost this scrape, not the daemon
        log.exception("metrics: internal error building the exposition")
        return _response("500 Internal Server Error", b"internal error; see the daemon's log\n")
    return _response("200 OK", body, content_type=CONTENT_TYPE)


def _response(status: str, body: bytes, headers: str = "", *,
              content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{headers}\r\n")
    return head.encode("ascii") + body
