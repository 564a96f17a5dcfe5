"""``--metrics``: the exposition built from status records (parsed back as
Prometheus would), the HTTP side against hostile peers, and both real
daemons scraped while a group goes out of sync and resyncs."""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from fsrep import _metrics as metrics
from fsrep._latency import BOUNDS, Latencies
from fsrep._metrics import ReplicaMetrics, answer, exposition, group_families, replica_families
from fsrep._state import RelationshipState
from fsrep._status import GroupStatus, SnapshotStatus
from tests.conftest import LINK_CLOSED, Cluster, MiB, run_fsrep, wait_for, write_random

GROUP = "3f1c2d6e-0b7a-4c1e-9d2f-5a6b7c8d9e0f"
DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana-dashboard.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def group_status(**changes: Any) -> GroupStatus:
    """A group's status as ``Relationship.statistics()`` makes one: InSync
    and idle unless *changes* say otherwise."""
    fields: dict[str, Any] = dict(
        id=GROUP, path="/", state="InSync", policy="sync", secondary="backup:7700", connected=True,
        last_acked_seq=10, ops_in_flight=0, lag_bytes=0, lag_seconds=0.0, bytes_in_flight=0, dirty_bytes=0,
        bytes_remaining=0, bytes_per_second=0, eta_seconds=None, percent=100.0, resync=None, resync_queued=None,
        resync_recent=(), resync_bytes_sent=0, bytes_cloned=0, last_resync_seconds=0.0, generation="ab" * 16,
        stale_reason="", last_error="", faults=(), internal_errors=0, snapshot=None)
    fields.update(changes)
    return GroupStatus(**fields)


def parsed(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def exposed(groups: list[tuple[GroupStatus, Latencies]], now: float = 1000.0) -> Samples:
    return parsed(exposition(lambda: group_families(groups, now))().decode())


# --- the exposition ------------------------------------------------------------------


def test_the_state_is_one_for_the_current_state_and_zero_for_every_other() -> None:
    samples = exposed([(group_status(state="Resyncing"), Latencies())])
    states = {dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "fsrep_group_state"}
    assert states == {s.value: float(s is RelationshipState.RESYNCING) for s in RelationshipState}


def test_each_gauge_and_counter_carries_its_status_field() -> None:
    status = group_status(state="OutOfSync", connected=False, ops_in_flight=3, lag_bytes=5000, lag_seconds=1.5,
                          dirty_bytes=4096, bytes_remaining=8192, bytes_per_second=100, eta_seconds=81.9,
                          bytes_sent=123456, resync_bytes_sent=777, bytes_cloned=99, reconnects=2)
    samples = exposed([(status, Latencies())])
    expected = {"fsrep_group_connected": 0, "fsrep_group_lag_ops": 3, "fsrep_group_lag_bytes": 5000,
                "fsrep_group_lag_seconds": 1.5, "fsrep_group_dirty_bytes": 4096,
                "fsrep_group_resync_bytes_remaining": 8192, "fsrep_group_resync_bytes_per_second": 100,
                "fsrep_group_resync_eta_seconds": 81.9, "fsrep_group_reconnects_total": 2,
                "fsrep_group_sent_bytes_total": 123456, "fsrep_group_resync_bytes_sent_total": 777,
                "fsrep_group_bytes_cloned_total": 99}
    assert {name: value(samples, name, group=GROUP, path="/") for name in expected} == expected


def test_counters_are_typed_counters() -> None:
    text = exposition(lambda: group_families([(group_status(), Latencies())], 0.0))().decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["fsrep_group_reconnects"] == "counter"
    assert types["fsrep_group_sent_bytes"] == "counter"
    assert types["fsrep_group_write_latency_seconds"] == "histogram"
    assert types["fsrep_group_state"] == "gauge"


def test_an_unknown_eta_and_no_common_snapshot_are_nan() -> None:
    samples = exposed([(group_status(), Latencies())])
    assert math.isnan(value(samples, "fsrep_group_resync_eta_seconds", group=GROUP, path="/"))
    assert math.isnan(value(samples, "fsrep_group_snapshot_age_seconds", group=GROUP, path="/"))


def test_the_snapshot_age_is_counted_from_when_it_was_taken() -> None:
    snapshot = SnapshotStatus(name="s1", created=940.0, generation="ab" * 16, seq=7, auto=False, common=True,
                              changed_bytes=0)
    samples = exposed([(group_status(snapshot=snapshot), Latencies())], now=1000.0)
    assert value(samples, "fsrep_group_snapshot_age_seconds", group=GROUP, path="/") == 60.0


def test_each_group_is_a_series_of_its_own() -> None:
    other = "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b"
    samples = exposed([(group_status(dirty_bytes=1), Latencies()),
                       (group_status(id=other, path="/vms/vm1", dirty_bytes=2), Latencies())])
    assert value(samples, "fsrep_group_dirty_bytes", group=GROUP, path="/") == 1
    assert value(samples, "fsrep_group_dirty_bytes", group=other, path="/vms/vm1") == 2


def test_the_write_latency_histogram_is_cumulative_with_a_sum_and_count() -> None:
    latencies = Latencies()
    for seconds in (0.00003, 0.0003, 0.0003, 0.002, 7.0):
        latencies.observe(seconds)
    samples = exposed([(group_status(), latencies)])
    bucket = lambda le: value(samples, "fsrep_group_write_latency_seconds_bucket", group=GROUP, path="/", le=le)
    assert bucket("5e-05") == 1
    assert bucket("0.00025") == 1
    assert bucket("0.0005") == 3
    assert bucket("0.0025") == 4
    assert bucket("5.0") == 4
    assert bucket("+Inf") == 5
    assert value(samples, "fsrep_group_write_latency_seconds_count", group=GROUP, path="/") == 5
    assert value(samples, "fsrep_group_write_latency_seconds_sum", group=GROUP, path="/") == pytest.approx(7.00263)


def test_a_latency_on_a_bucket_bound_counts_in_that_bucket() -> None:
    latencies = Latencies()
    for bound in BOUNDS:
        latencies.observe(bound)
    assert [count for _, count in latencies.buckets()] == [*range(1, len(BOUNDS) + 1), len(BOUNDS)]


def test_a_replica_is_a_series_per_group() -> None:
    text = exposition(lambda: replica_families([ReplicaMetrics(GROUP, 42, True, 40, 4096)]))().decode()
    samples = parsed(text)
    assert value(samples, "fsrep_replica_last_applied_seq", group=GROUP) == 42
    assert value(samples, "fsrep_replica_connected", group=GROUP) == 1
    assert value(samples, "fsrep_replica_frames_applied_total", group=GROUP) == 40
    assert value(samples, "fsrep_replica_bytes_applied_total", group=GROUP) == 4096


def test_a_status_from_a_daemon_that_knew_no_reconnects_still_reads() -> None:
    data = group_status(reconnects=3).to_json()
    del data["reconnects"], data["move"], data["divergence"]
    status = GroupStatus.from_json(data)
    assert status.reconnects == 0
    assert status.move is None
    assert status.divergence is None


# --- HTTP, sans IO -------------------------------------------------------------------


def _split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


def test_get_metrics_answers_the_exposition_and_closes() -> None:
    for target in (b"/metrics", b"/", b"/metrics?name=x"):
        status, headers, body = _split(answer(b"GET " + target + b" HTTP/1.1\r\nHost: x", lambda: b"m 1\n"))
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert headers["Connection"] == "close"
        assert int(headers["Content-Length"]) == len(body)
        assert body == b"m 1\n"


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /other HTTP/1.1", "HTTP/1.1 404 Not Found"),
    (b"POST /metrics HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
    (b"\x16\x03\x01\x02\x00", "HTTP/1.1 400 Bad Request"),
    (b"GET /metrics", "HTTP/1.1 400 Bad Request"),
])
def test_anything_but_a_get_of_the_metrics_is_refused(head: bytes, status: str) -> None:
    got, headers, _ = _split(answer(head, lambda: pytest.fail("rendered for a refused request")))
    assert got == status
    assert headers["Connection"] == "close"


def test_a_failure_building_the_exposition_costs_only_that_scrape() -> None:
    def broken() -> bytes:
        raise KeyError("a bug")
    assert _split(answer(b"GET /metrics HTTP/1.1", broken))[0] == "HTTP/1.1 500 Internal Server Error"


# --- HTTP, over a socket ----------------------------------------------------------------


async def _get(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        out = bytearray()
        while data := await stream.receive_some():
            out += data
    return bytes(out)


async def _closed_by_server(stream: trio.SocketStream) -> bool:
    """Whether the server closed *stream* (after sending nothing)."""
    try:
        return await stream.receive_some() == b""
    except trio.BrokenResourceError:  # reset: it closed with our bytes unread
        return True


async def test_a_head_without_an_end_is_refused_after_max_head_bytes() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"A" * MiB)
    assert await metrics.read_head(receive) is None
    assert len(await receive.receive_some()) == MiB - metrics.MAX_HEAD  # the rest never read


async def test_a_head_ends_at_its_blank_line() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await metrics.read_head(receive) == b"GET / HTTP/1.1\r\nHost: x"
    await send.aclose()
    assert await metrics.read_head(receive) is None


async def test_hostile_peers_are_dropped_and_the_next_scrape_is_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "TIMEOUT", 0.5)
    listeners = await metrics.open_metrics(("127.0.0.1", 0))
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_metrics, listeners, lambda: b"fsrep_up 1\n")
        endless = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            with contextlib.suppress(trio.BrokenResourceError):  # reset: closed with the rest unread
                await endless.send_all(b"A" * MiB)
            assert await _closed_by_server(endless)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await _closed_by_server(silent)
        with trio.fail_after(5):
            assert (await _get(port)).endswith(b"fsrep_up 1\n")
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_limit_are_closed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "TIMEOUT", 3.0)
    listeners = await metrics.open_metrics(("127.0.0.1", 0))
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.serve_metrics, listeners, lambda: b"fsrep_up 1\n")
        holders = []
        with trio.fail_after(2):  # long before the holders' timeout
            while True:  # until the server has no slot left: it closes the newcomer at once
                newcomer = await trio.open_tcp_stream("127.0.0.1", port)
                with trio.move_on_after(0.1):
                    if await _closed_by_server(newcomer):
                        break
                holders.append(newcomer)
        assert len(holders) >= metrics.MAX_CONNECTIONS
        for holder in holders:
            await holder.aclose()
        with trio.fail_after(5):
            assert (await _get(port)).endswith(b"fsrep_up 1\n")
        nursery.cancel_scope.cancel()


async def test_a_port_that_cannot_be_bound_is_a_config_error_naming_it() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(metrics.ConfigError, match=rf"cannot serve metrics on 127\.0\.0\.1:{port}: "):
            await metrics.open_metrics(("127.0.0.1", port))


# --- the command line -------------------------------------------------------------


def _one_line_error(done) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line: {lines}"
    return lines[0]


def test_a_bad_metrics_address_is_one_line(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    line = _one_line_error(run_fsrep("serve", str(other), "--listen", "127.0.0.1:0", "--key-file", str(cluster.key),
                                     "--metrics", "nonsense", check=False))
    assert line.startswith("fsrep serve: error: --metrics must be HOST:PORT")
    line = _one_line_error(cluster.mount("--metrics", "127.0.0.1:99999", check=False))
    assert line.startswith("fsrep mount: error: --metrics must be HOST:PORT")


def test_a_metrics_port_in_use_stops_either_daemon_with_one_line(cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        line = _one_line_error(run_fsrep("serve", str(other), "--listen", "127.0.0.1:0", "--key-file",
                                         str(cluster.key), "--metrics", address, check=False))
        assert line == f"fsrep serve: error: cannot serve metrics on {address}: Address already in use"
        line = _one_line_error(cluster.mount("--metrics", address, check=False))
        assert line == f"fsrep mount: error: cannot serve metrics on {address}: Address already in use"
    assert not cluster.mounted
    assert str(cluster.mnt) not in Path("/proc/self/mounts").read_text()


# --- both daemons, scraped --------------------------------------------------------------

SERVING = re.compile(r"serving Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics")


def metrics_port(log: Path) -> int:
    """The port the daemon that writes *log* serves its metrics on (the
    last it announced: a restarted daemon binds port 0 anew)."""
    found = wait_for(lambda: SERVING.findall(log.read_text()), f"the metrics address in {log}")
    return int(found[-1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parsed(response.read().decode())


def group_value(samples: Samples, name: str, **labels: str) -> float:
    """The one group's value of *name* (its group and path labels aside)."""
    found = [v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items()]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def in_state(port: int, state: str) -> Samples | None:
    samples = scrape(port)
    return samples if group_value(samples, "fsrep_group_state", state=state) == 1 else None


def _dropped(sock: socket.socket) -> bool:
    """Whether the daemon closed *sock*, polled without blocking long."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def _flood(port: int) -> None:
    """1 MiB without a line end: the daemon closes the connection (after
    reading its 8 KiB) without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"A" * MiB)
            answered = sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):  # closed with the rest unread
            answered = b""
        assert answered == b""


@pytest.mark.fuse
@pytest.mark.expect_log(LINK_CLOSED)
def test_both_daemons_scraped_through_out_of_sync_and_a_resync(cluster: Cluster) -> None:
    secondary_log = cluster.secondary.store / ".fsrep" / "serve.log"
    cluster.secondary.stop()
    cluster.secondary.args = ("--metrics", "127.0.0.1:0")
    cluster.secondary.start()
    cluster.mount("--metrics", "127.0.0.1:0", "--resync-rate-limit", "1M")
    primary = metrics_port(cluster.primary_store / ".fsrep" / "fsrep.log")
    silent = socket.create_connection(("127.0.0.1", primary))  # never sends: dropped after a few seconds
    try:
        for i in range(20):
            (cluster.mnt / f"small-{i}").write_bytes(b"x" * 1000)
        samples = wait_for(lambda: in_state(primary, "InSync"), "InSync in the metrics")
        assert group_value(samples, "fsrep_group_connected") == 1
        assert group_value(samples, "fsrep_group_write_latency_seconds_count") >= 20
        assert group_value(samples, "fsrep_group_sent_bytes_total") >= 20 * 1000
        assert group_value(samples, "fsrep_group_reconnects_total") == 0
        replica = scrape(metrics_port(secondary_log))
        assert group_value(replica, "fsrep_replica_connected") == 1
        assert group_value(replica, "fsrep_replica_frames_applied_total") >= 40  # a create and a write each
        assert group_value(replica, "fsrep_replica_bytes_applied_total") >= 20 * 1000

        cluster.secondary.stop()
        write_random(cluster.mnt / "disk.img", 4)
        samples = wait_for(lambda: in_state(primary, "OutOfSync"), "OutOfSync in the metrics")
        assert group_value(samples, "fsrep_group_connected") == 0
        assert group_value(samples, "fsrep_group_dirty_bytes") >= 4 * MiB

        cluster.secondary.start()
        samples = wait_for(lambda: in_state(primary, "Resyncing"), "Resyncing in the metrics", timeout=60)
        assert group_value(samples, "fsrep_group_resync_bytes_remaining") > 0
        assert group_value(samples, "fsrep_group_reconnects_total") == 1
        _flood(primary)
        samples = wait_for(lambda: in_state(primary, "InSync"), "InSync again in the metrics", timeout=60)
        assert group_value(samples, "fsrep_group_dirty_bytes") == 0
        assert group_value(samples, "fsrep_group_resync_bytes_sent_total") >= 4 * MiB
        eta = group_value(samples, "fsrep_group_resync_eta_seconds")
        assert math.isnan(eta) or eta == 0  # no run left to time
        wait_for(lambda: _dropped(silent), "the silent client to be dropped")
    finally:
        silent.close()

    secondary = metrics_port(secondary_log)
    _flood(secondary)
    replica = scrape(secondary)
    assert group_value(replica, "fsrep_replica_connected") == 1
    assert group_value(replica, "fsrep_replica_last_applied_seq") > 0
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{secondary}/nothing", timeout=10)
    assert refused.value.code == 404
    cluster.assert_replicated()


# --- the dashboard -----------------------------------------------------------------


def _exposed_names() -> set[str]:
    """Every sample name either daemon's exposition has."""
    text = exposition(lambda: [*group_families([(group_status(), Latencies())], 0.0),
                               *replica_families([ReplicaMetrics(GROUP, 1, True, 1, 1)])])().decode()
    return {name for name, _ in parsed(text)}


def _expressions(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("expr", "query", "definition") and isinstance(v, str)] + \
            [e for v in node.values() for e in _expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in _expressions(v)]
    return []


def test_the_dashboard_uses_only_metrics_the_daemons_expose() -> None:
    board = json.loads(DASHBOARD.read_text())
    expressions = _expressions(board)
    used = {name for expr in expressions for name in re.findall(r"\bfsrep_[a-z_]+", expr)}
    assert used, "the dashboard queries no fsrep metric"
    assert used <= _exposed_names(), sorted(used - _exposed_names())
    assert "${DS_PROMETHEUS}" in json.dumps(board)
    assert "group" in {v["name"] for v in board["templating"]["list"]}
    assert any("histogram_quantile(0.99" in expr for expr in expressions)


def test_every_metric_the_mount_exposes_has_a_panel() -> None:
    used = {name for expr in _expressions(json.loads(DASHBOARD.read_text()))
            for name in re.findall(r"\bfsrep_group_[a-z_]+", expr)}
    wanted = {"fsrep_group_state", "fsrep_group_lag_bytes", "fsrep_group_lag_ops", "fsrep_group_lag_seconds",
              "fsrep_group_dirty_bytes", "fsrep_group_resync_bytes_remaining", "fsrep_group_resync_eta_seconds",
              "fsrep_group_snapshot_age_seconds", "fsrep_group_reconnects_total", "fsrep_group_sent_bytes_total",
              "fsrep_group_write_latency_seconds_bucket"}
    assert wanted <= used, sorted(wanted - used)

