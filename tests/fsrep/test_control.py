"""The control socket and its command table: each command's request is read
from its JSON object, a bad one is refused in one line that names the
problem, the status records survive the trip over the socket with the keys
operators read, and a live daemon answers status and resync — and goes on
answering after any bad request."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import fsrep
from fsrep._commands import COMMANDS, JSON_TYPES, Record, parse_request
from fsrep._control import MAX_REQUEST, SOCKET_NAME
from tests.conftest import Cluster, wait_for

MiB = 1024 * 1024

# What `fsrep status --json` has always printed for a group: scripts read these keys.
GROUP_KEYS = ["id", "path", "state", "policy", "secondary", "connected", "last_acked_seq", "ops_in_flight",
              "lag_bytes", "lag_seconds", "bytes_in_flight", "dirty_bytes", "bytes_remaining", "bytes_per_second",
              "eta_seconds", "percent", "resync", "resync_queued", "resync_recent", "resync_bytes_sent", "bytes_cloned",
              "last_resync_seconds", "generation", "stale_reason", "last_error", "faults", "internal_errors",
              "snapshot", "divergence", "bytes_sent", "data_dir", "move", "reconnects",
              "moved_to", "move_unconfirmed"]
RESYNC_KEYS = ["id", "mode", "reason", "running", "finished", "outcome", "verified", "restarts", "rate_limit",
               "bytes_copied", "bytes_checked", "bytes_mismatched", "bytes_remaining", "bytes_per_second",
               "directories_checked", "directories_remaining", "entries_checked", "eta_seconds", "percent",
               "elapsed_seconds", "snapshot", "kept", "kept_side", "clones_replayed", "bytes_replayed_as_clones",
               "restored"]


@dataclass(frozen=True, slots=True)
class _NeedsAName(fsrep.Request[fsrep.ResyncStarted]):
    """A command with a required field, as promote or snapshot will have."""

    command: ClassVar[str] = "promote"
    reply: ClassVar[type[Record]] = fsrep.ResyncStarted
    name: str
    force: bool = False


# --- the table ---------------------------------------------------------------------


@pytest.mark.parametrize("request_", [fsrep.StatusRequest(), fsrep.ResyncRequest(),
                                      fsrep.ResyncRequest(group="/vms/vm1", mode="checksum", rate_limit=50 * MiB)],
                         ids=repr)
def test_each_command_reads_back_what_a_client_sends(request_: fsrep.Request) -> None:
    wire = json.loads(json.dumps(request_.to_json()))
    assert wire["cmd"] == request_.command
    assert parse_request(wire) == request_


def test_the_table_names_each_command_by_its_request_and_its_fields_are_json_scalars() -> None:
    assert set(COMMANDS) == {"status", "resync", "snapshot-create", "snapshot-list", "snapshot-delete", "clone",
                             "move", "move-abort"}
    for name, row in COMMANDS.items():
        assert row.request.command == name
        for field in dataclasses.fields(row.request):
            hint = field.type
            assert all(t in {"str", "int", "float", "bool", "None"} for t in hint.split(" | ")), (name, hint)
    assert set(JSON_TYPES) >= {str, int, float, bool, type(None)}


def test_the_wire_form_of_a_resync_is_the_one_the_tools_always_sent() -> None:
    assert fsrep.ResyncRequest(group="g", mode="full", rate_limit=MiB).to_json() == \
        {"cmd": "resync", "group": "g", "mode": "full", "rate_limit": MiB}
    assert fsrep.StatusRequest().to_json() == {"cmd": "status"}


@pytest.mark.parametrize(("message", "problem"), [
    ([1], "a request is a JSON object, not [1]"),
    ("status", 'a request is a JSON object, not "status"'),
    ({}, 'the request names no command: send {"cmd": NAME, ...} with NAME one of status, resync, snapshot-create, '
         'snapshot-list, snapshot-delete'),
    ({"cmd": "promote"}, 'unknown command "promote": use one of status, resync, snapshot-create'),
    ({"cmd": 7}, "unknown command 7: use one of status, resync, snapshot-create"),
    ({"cmd": "status", "verbose": True}, 'status takes no field "verbose" (it takes none)'),
    ({"cmd": "resync", "rate-limit": 5},
     'resync takes no field "rate-limit" (its fields are group, mode, rate_limit, snapshot, discard, path, restore)'),
    ({"cmd": "resync", "x" * 1000: 5}, 'resync takes no field "' + "x" * 59 + '... (its fields'),
    ({"cmd": "resync", "group": 5}, "resync: group must be a string or null, not 5"),
    ({"cmd": "resync", "mode": ["quick"]}, 'resync: mode must be a string, not ["quick"]'),
    ({"cmd": "resync", "rate_limit": True}, "resync: rate_limit must be a whole number, not true"),
    ({"cmd": "resync", "rate_limit": 1.5}, "resync: rate_limit must be a whole number, not 1.5"),
    ({"cmd": "resync", "rate_limit": "50M"}, 'resync: rate_limit must be a whole number, not "50M"'),
    ({"cmd": "resync", "mode": "fast"}, 'unknown resync mode "fast": use one of quick, snapshot, checksum, full'),
    ({"cmd": "resync", "rate_limit": -1}, "rate limit must be a whole number of bytes per second from 0 to "),
    ({"cmd": "resync", "rate_limit": 10**400}, "not 1" + "0" * 59 + "..."),
    ({"cmd": "resync", "mode": "x" * 1000}, 'unknown resync mode "' + "x" * 59 + "...: use one of"),
], ids=lambda value: json.dumps(value)[:40])
def test_a_bad_request_is_refused_in_one_line_that_names_the_problem(message: object, problem: str) -> None:
    with pytest.raises(fsrep.BadRequest) as caught:
        parse_request(message)
    text = str(caught.value)
    assert "\n" not in text
    assert problem in text, text
    assert len(text) < 200, text


def test_a_missing_field_is_named_and_a_present_one_is_type_checked() -> None:
    with pytest.raises(fsrep.BadRequest, match=r'^promote needs the field "name"$'):
        _NeedsAName.from_json({"cmd": "promote"})
    with pytest.raises(fsrep.BadRequest, match=r"^promote: force must be true or false, not 1$"):
        _NeedsAName.from_json({"cmd": "promote", "name": "r", "force": 1})
    assert _NeedsAName.from_json({"cmd": "promote", "name": "r"}) == _NeedsAName("r")


# --- the status records -------------------------------------------------------------


def _group_status(**changes: object) -> fsrep.GroupStatus:
    progress = fsrep.ResyncProgress(
        id=3, mode="checksum", reason="asked", running=True, finished=False, outcome="", verified=False,
        restarts=1, rate_limit=MiB, bytes_copied=10, bytes_checked=20, bytes_mismatched=4, bytes_remaining=70,
        bytes_per_second=5, directories_checked=2, directories_remaining=1, entries_checked=9, eta_seconds=None,
        percent=30.0, elapsed_seconds=1.5, snapshot="")
    group = fsrep.GroupStatus(
        id="g1", path="/", state="Resyncing", policy="sync", secondary="127.0.0.1:1", connected=True,
        last_acked_seq=12, ops_in_flight=0, lag_bytes=70, lag_seconds=0.5, bytes_in_flight=0, dirty_bytes=70,
        bytes_remaining=70, bytes_per_second=5, eta_seconds=None, percent=30.0, resync=progress,
        resync_queued=fsrep.QueuedRun(id=4, mode="full", restarts=0),
        resync_recent=(fsrep.EndedRun(id=2, mode="quick", outcome="superseded by run 3", verified=False),),
        resync_bytes_sent=10, bytes_cloned=0, last_resync_seconds=0.0, generation="ab" * 8, stale_reason="link lost",
        last_error="", faults=(), internal_errors=0,
        snapshot=fsrep.SnapshotStatus(name="s1", created=1.5, generation="cd" * 16, seq=9, auto=False, common=True,
                                      changed_bytes=4096))
    return dataclasses.replace(group, **changes)


def test_a_group_status_keeps_its_keys_and_survives_the_socket() -> None:
    group = _group_status()
    wire = json.loads(json.dumps(group.to_json()))
    assert list(wire) == GROUP_KEYS
    assert list(wire["resync"]) == RESYNC_KEYS
    assert wire["resync_queued"] == {"id": 4, "mode": "full", "restarts": 0}
    assert wire["resync_recent"] == [{"id": 2, "mode": "quick", "outcome": "superseded by run 3", "verified": False}]
    assert fsrep.GroupStatus.from_json(wire) == group
    idle = _group_status(resync=None, resync_queued=None, resync_recent=(), snapshot=None)
    assert fsrep.GroupStatus.from_json(json.loads(json.dumps(idle.to_json()))) == idle


def test_a_status_reply_without_a_field_is_unreadable_not_a_crash() -> None:
    daemon = fsrep.DaemonStatus(pid=1, store="/s", mountpoint="/m", groups=(_group_status(),))
    assert fsrep.DaemonStatus.from_json(daemon.to_json()) == daemon
    wire = json.loads(json.dumps(daemon.to_json()))
    assert fsrep.DaemonStatus.from_json(wire) == daemon
    assert daemon.group("g1") == _group_status()
    assert daemon.group("g2") is None
    del wire["groups"][0]["percent"]
    with pytest.raises(ValueError, match="the GroupStatus has no percent"):
        fsrep.DaemonStatus.from_json(wire)
    with pytest.raises(ValueError, match="a list of GroupStatus is a JSON array, not dict"):
        fsrep.DaemonStatus.from_json({**wire, "groups": {}})


# --- a live daemon -----------------------------------------------------------------


def _send_line(meta: Path, line: bytes) -> dict:
    """Send raw bytes to the daemon's control socket; its reply, decoded."""
    fd = os.open(meta, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
            sock.sendall(line)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
    finally:
        os.close(fd)
    assert chunks, "the daemon closed the connection without a reply"
    reply = b"".join(chunks)
    assert reply.endswith(b"\n"), reply
    assert reply.count(b"\n") == 1, reply
    return json.loads(reply)


BAD_LINES = [
    (b"not json\n", "bad request: Expecting value"),
    (b"[1]\n", "bad request: a request is a JSON object, not [1]"),
    (b'{"cmd": "promote"}\n', 'bad request: unknown command "promote"'),
    (b'{"cmd": "resync", "group": 5}\n', "bad request: resync: group must be a string or null, not 5"),
    (b'{"cmd": "resync", "mode": "fast"}\n', 'bad request: unknown resync mode "fast"'),
    (b'{"cmd": "status", "verbose": true}\n', 'bad request: status takes no field "verbose"'),
    (b'{"cmd": "resync", "group": "nope"}\n', "no consistency group 'nope' (groups: "),
    (b" " * (MAX_REQUEST + 8192) + b"\n", "bad request: request too long"),
]


def test_the_daemon_answers_each_bad_request_in_one_line_and_goes_on(mounted: Cluster) -> None:
    meta = mounted.primary_store / ".fsrep"
    for line, problem in BAD_LINES:
        reply = _send_line(meta, line)
        assert list(reply) == ["error"], reply
        assert reply["error"].startswith(problem), reply
        assert "\n" not in reply["error"]
        assert "Traceback" not in reply["error"]
    status = fsrep.call(meta, fsrep.StatusRequest())
    assert [group.state for group in status.groups] == ["InSync"]
    (mounted.mnt / "after").write_bytes(b"still serving")
    mounted.assert_replicated()  # and no ERROR or traceback in either log


def test_status_and_a_resync_through_the_socket(mounted: Cluster) -> None:
    meta = mounted.primary_store / ".fsrep"
    (mounted.mnt / "f").write_bytes(os.urandom(MiB))
    status = fsrep.call(meta, fsrep.StatusRequest())
    assert status.pid == mounted.primary_pid()
    assert Path(status.mountpoint) == mounted.mnt
    assert Path(status.store) == mounted.primary_store
    [group] = status.groups
    assert (group.path, group.state, group.connected) == ("/", "InSync", True)
    assert group.last_acked_seq > 0
    started = fsrep.call(meta, fsrep.ResyncRequest(mode="checksum", rate_limit=2 * MiB))
    assert (started.group, started.mode, started.rate_limit) == (group.id, "checksum", 2 * MiB)

    def finished() -> fsrep.GroupStatus | None:
        now = fsrep.call(meta, fsrep.StatusRequest()).group(group.id)
        assert now is not None
        return now if now.resync is not None and now.resync.id == started.run and now.resync.finished else None

    done = wait_for(finished, "the checksum resync to finish")
    assert done.state == "InSync"
    assert (done.resync.outcome, done.resync.verified, done.resync.mode) == ("InSync", True, "checksum")
    assert done.resync.bytes_checked >= MiB
    assert done.resync.bytes_mismatched == 0
    with pytest.raises(fsrep.ControlError, match="no consistency group 'other'"):
        fsrep.call(meta, fsrep.ResyncRequest(group="other"))
    mounted.assert_replicated()
