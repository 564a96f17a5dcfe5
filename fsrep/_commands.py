"""The commands a primary daemon answers on its control socket, in one
table.

How this works: a request is one JSON object, ``{"cmd": NAME, FIELD: VALUE,
...}``. ``COMMANDS`` maps each NAME to its request type — a frozen dataclass
whose fields are the request's fields — and the handler that answers it.
``dispatch()`` reads the object into its request type, checking that the
command exists, that each field it needs is there, that none it does not
take is, and that each value has the field's JSON type; the request's own
``__post_init__`` checks the values. A bad request is answered with one line
that names the problem, and the daemon goes on. The handler returns a reply
record (``to_json()`` is what is sent) or raises ``Refused``.

A new command is a request dataclass (its ``command`` name and ``reply``
type), an async handler ``(Daemon, request) -> reply``, and a row in
``COMMANDS``.

Clients build the same request types and read the same reply records
(``fsrep.call``), so both ends of the socket share one definition. This
module imports no trio or FUSE at run time: a client pays for neither.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from tracking import SnapshotError, check_name

from ._args import RATE_LIMIT
from ._groups import OtherGroup
from ._progress import MODES
from ._state import RelationshipState
from ._status import DaemonStatus, GroupSnapshots, Record, SnapshotList, SnapshotStatus, fields_of

if TYPE_CHECKING:
    from ._groups import Group, Groups
    from ._move import Done
    from ._ops import Operations
    from ._splitter import Relationship

ReplyT = TypeVar("ReplyT", bound=Record)
JSON_TYPES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
              types.NoneType: "null"}
SHOWN = 60  # characters of a bad value quoted in an error
DISCARDS = ("primary", "secondary")  # the sides of a split brain an operator may give up


class BadRequest(ValueError):
    """Raised when a request cannot be read: not an object, an unknown
    command, a missing or unknown field, a value of the wrong type or out of
    range. The message is one line that names the problem (the sender's
    fault; the daemon answers it and goes on)."""


class Refused(Exception):
    """Raised by a handler that understood the request but cannot do it now
    (no such group, the secondary unreachable, ...). The message is the one
    line the operator sees."""


class Request(Generic[ReplyT]):
    """What every request type shares: its command name, its reply record,
    and the JSON form on the wire."""

    __slots__ = ()
    command: ClassVar[str]
    reply: ClassVar[type[Record]]

    def to_json(self) -> dict[str, Any]:
        """The object a client sends (a field left at None, its default,
        is left out: a new optional field does not change what was sent)."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return {"cmd": self.command, **{f.name: getattr(self, f.name) for f in fields
                                        if not (f.default is None and getattr(self, f.name) is None)}}

    @classmethod
    def from_json(cls, message: dict[str, Any]) -> Self:
        """The request *message* makes.

        Raises:
            BadRequest: a field is missing, unknown, or of the wrong type, or
                a value the request does not allow.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(message) - set(fields) - {"cmd"})
        if unknown:
            takes = f"its fields are {', '.join(fields)}" if fields else "it takes none"
            raise BadRequest(f"{cls.command} takes no field {shown(unknown[0])} ({takes})")
        missing = [name for name, f in fields.items() if name not in message and _required(f)]
        if missing:
            raise BadRequest(f"{cls.command} needs the field {shown(missing[0])}")
        given = {name: message[name] for name in fields if name in message}
        hints = typing.get_type_hints(cls)
        for name, value in given.items():
            _check_type(cls.command, name, value, hints[name])
        return cls(**given)


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_type(command: str, name: str, value: Any, hint: Any) -> None:
    """Raise BadRequest unless *value* is of one of the JSON types *hint*
    allows (``str``, ``int``, ``float``, ``bool``, ``None`` and unions of them;
    true and false are not numbers)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)
    if any(isinstance(value, t) and (t is bool or not isinstance(value, bool)) for t in allowed):
        return
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return
    wanted = " or ".join(JSON_TYPES[t] for t in allowed)
    raise BadRequest(f"{command}: {name} must be {wanted}, not {shown(value)}")


def shown(value: Any) -> str:
    """*value* as JSON, cut short: an error quotes it in one short line."""
    text = json.dumps(value)
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."


# --- requests and replies ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusRequest(Request[DaemonStatus]):
    """Every group's state (``fsrep status``; tools poll it)."""

    command: ClassVar[str] = "status"
    reply: ClassVar[type[Record]] = DaemonStatus


@dataclass(frozen=True, slots=True)
class ResyncStarted(Record):
    """The run that will resync the group (it may have been running or
    queued already); ``rate_limit`` as applied, bytes/s, 0 for none."""

    group: str
    run: int
    mode: str
    rate_limit: int
    files: int = 0  # --path: the regular files it compares by digest
    bytes: int = 0  # ... and their size
    directories: int = 0  # ... and the directories whose entries it compares


@dataclass(frozen=True, slots=True)
class ResyncRequest(Request[ResyncStarted]):
    """Start a resync of one group, or join the run that does at least as
    much (``fsrep-resync``). *group* is its id or path; None names the only
    group. *rate_limit* is bytes/s, 0 for the mount's default."""

    command: ClassVar[str] = "resync"
    reply: ClassVar[type[Record]] = ResyncStarted
    group: str | None = None
    mode: str = "quick"
    rate_limit: int = 0
    snapshot: str | None = None  # mode snapshot: from this one, not the newest common snapshot
    discard: str | None = None  # split brain: the side given up ("primary" or "secondary"); the daemon picks the mode
    path: str | None = None  # compare this file or directory (relative to the mount root) with the replica
    restore: bool | None = None  # with path: first make that file here as the replica holds it

    def __post_init__(self) -> None:
        if self.path is not None:
            if self.group is not None or self.mode != "quick" or self.snapshot or self.discard:
                raise BadRequest("a path is compared on its own: with no group, mode, snapshot or discard")
            check_mount_path(self.path)
        if self.restore and not self.path:
            raise BadRequest("restore names the file it restores: a path, not the group's root")
        if self.discard is not None and (self.discard not in DISCARDS or self.mode != "quick" or self.snapshot):
            raise BadRequest(f"discard is {' or '.join(DISCARDS)}, with no mode or snapshot of its own, not "
                             f"{shown(self.discard)}")
        if self.mode not in MODES:
            raise BadRequest(f"unknown resync mode {shown(self.mode)}: use one of {', '.join(MODES)}")
        if self.snapshot is not None:
            if self.mode != "snapshot":
                raise BadRequest("a snapshot is named only with mode snapshot")
            _snapshot_name(self.snapshot)
        if not 0 <= self.rate_limit <= RATE_LIMIT.high:
            raise BadRequest(f"rate limit must be a whole number of bytes per second from 0 to "
                             f"{int(RATE_LIMIT.high)}, not {shown(self.rate_limit)}")


@dataclass(frozen=True, slots=True)
class Cloned(Record):
    """What ``fsrep clone`` made: the bytes cloned, and whether the copy
    was replicated as one operation (else it waits, dirty, for a resync).
    *other_group*: nothing was made — the destination is in that group,
    whose replica may be elsewhere: the caller copies the file as data."""

    group: str
    bytes: int
    replicated: bool
    other_group: str = ""


@dataclass(frozen=True, slots=True)
class CloneRequest(Request[Cloned]):
    """Clone file *inode* to *name* in directory *parent* (inode numbers as
    a stat through the mount gives them: the kernel has looked them up)."""

    command: ClassVar[str] = "clone"
    reply: ClassVar[type[Record]] = Cloned
    inode: int
    parent: int
    name: str

    def __post_init__(self) -> None:
        for what, number in (("inode", self.inode), ("parent", self.parent)):
            if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 2**64:
                raise BadRequest(f"{what} must be an inode number, not {shown(number)}")
        if not isinstance(self.name, str) or not self.name or "/" in self.name or "\0" in self.name \
                or self.name in (".", "..") or len(os.fsencode(self.name)) > 255:
            raise BadRequest(f"name must be one path component, not {shown(self.name)}")


def check_mount_path(path: str) -> bytes:
    """*path*, a path relative to the mount root, as bytes.

    Raises:
        BadRequest: it is not one (absolute, "..", a NUL, too long).
    """
    raw = os.fsencode(path)
    parts = raw.split(b"/") if raw else []
    if raw.startswith(b"/") or b"\0" in raw or len(raw) > 4095 or any(p in (b"", b".", b"..") for p in parts):
        raise BadRequest(f"a path relative to the mount root, without '.' or '..', is needed, not {shown(path)}")
    return raw


@dataclass(frozen=True, slots=True)
class Moved(Record):
    """Where ``fsrep-move`` moved a group's data, and how long that took
    (within one file system, one rename that no client waits for; across
    file systems, a copy and a pause of *pause_seconds* at its cutover)."""

    group: str
    path: str
    source: str
    destination: str
    seconds: float
    copied_bytes: int = 0  # across file systems: the data copied, while clients worked on
    pause_seconds: float = 0.0  # ... and how long their changes waited at the cutover


@dataclass(frozen=True, slots=True)
class MoveRequest(Request[Moved]):
    """Move group *group*'s data to directory *to* (``_move``), or the
    group to the primary at *to_primary* (``_move_primary``)."""

    command: ClassVar[str] = "move"
    reply: ClassVar[type[Record]] = Moved
    group: str
    to: str = ""
    to_primary: str = ""  # HOST:PORT

    def __post_init__(self) -> None:
        if bool(self.to) == bool(self.to_primary):
            raise BadRequest("give one of to (a directory) and to_primary (HOST:PORT)")
        if self.to_primary and (len(self.to_primary) > 300 or not self.to_primary.isprintable()):
            raise BadRequest(f"to_primary must be HOST:PORT, not {shown(self.to_primary)}")
        if self.to and ("\0" in self.to or len(os.fsencode(self.to)) > 4095):
            raise BadRequest(f"to must be a directory's path, not {shown(self.to)}")


@dataclass(frozen=True, slots=True)
class MoveAborted(Record):
    """The move ``fsrep-move --abort`` stops: its copy is removed once the
    mover notices (the move request then fails with "aborted")."""

    group: str
    destination: str
    reclaimed: bool = False  # a move to another primary that never got its answer: the group is taken back


@dataclass(frozen=True, slots=True)
class MoveAbortRequest(Request[MoveAborted]):
    """Stop the move of group *group*'s data to another file system, if it
    has not cut over yet."""

    command: ClassVar[str] = "move-abort"
    reply: ClassVar[type[Record]] = MoveAborted
    group: str


def _snapshot_name(name: str) -> None:
    try:
        check_name(name)
    except SnapshotError as exc:
        raise BadRequest(str(exc)) from None


@dataclass(frozen=True, slots=True)
class SnapshotTaken(Record):
    """The snapshot ``snapshot create`` took."""

    group: str
    snapshot: SnapshotStatus

    @classmethod
    def from_json(cls, data: Any) -> Self:
        fields = fields_of(cls, data)
        return cls(group=fields["group"], snapshot=SnapshotStatus.from_json(fields["snapshot"]))


@dataclass(frozen=True, slots=True)
class SnapshotCreateRequest(Request[SnapshotTaken]):
    """Take a pseudo snapshot of one group (*group*: its id or path, None
    for the only one), named *name* or by the time."""

    command: ClassVar[str] = "snapshot-create"
    reply: ClassVar[type[Record]] = SnapshotTaken
    group: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None:
            _snapshot_name(self.name)


@dataclass(frozen=True, slots=True)
class SnapshotListRequest(Request[SnapshotList]):
    """Every group's snapshots."""

    command: ClassVar[str] = "snapshot-list"
    reply: ClassVar[type[Record]] = SnapshotList


@dataclass(frozen=True, slots=True)
class SnapshotDeleteRequest(Request[SnapshotTaken]):
    """Retire snapshot *name* of one group, on both sides."""

    command: ClassVar[str] = "snapshot-delete"
    reply: ClassVar[type[Record]] = SnapshotTaken
    name: str
    group: str | None = None

    def __post_init__(self) -> None:
        _snapshot_name(self.name)


# --- handlers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Daemon:
    """What a handler may use: the running mount."""

    store: Path
    mountpoint: Path
    groups: Groups
    ops: Operations
    key: bytes = b""  # the mount's key: a move to another primary authenticates with it
    start: Callable[[Callable[[], Awaitable[None]]], None] | None = None  # runs a task as long as the mount serves


async def show_status(daemon: Daemon, req: StatusRequest) -> DaemonStatus:
    return DaemonStatus(pid=os.getpid(), store=str(daemon.store), mountpoint=str(daemon.mountpoint),
                        groups=tuple(group.rel.statistics() for group in daemon.groups.all))


def _group(groups: Groups, name: str | None) -> Group:
    """The group *name* names (the only one for None).

    Raises:
        Refused: no such group, or several and none named.
    """
    group = groups.find(name)
    if group is None:
        known = ", ".join(f"{g.rel.record.id} (/{g.rel.record.path})" for g in groups.all)
        what = "this mount has several groups; name one" if name is None else f"no consistency group {name!r}"
        raise Refused(f"{what} (groups: {known})")
    return group


async def start_resync(daemon: Daemon, req: ResyncRequest) -> ResyncStarted:
    """Start or join a run — and, when the secondary is not connected, try
    it at once first (an operator who asks for a resync has usually just
    brought it back)."""
    rel = _group(daemon.groups, req.group).rel
    if req.mode == "checksum" and rel.record.policy == "strict" and rel.state is RelationshipState.IN_SYNC:
        raise Refused(f"group {rel.record.id} uses policy strict: while a checksum resync compares directories, "
                      f"changes in them would fail with EIO — remount with --policy sync to run it")
    if req.discard is not None:
        return await _discard(rel, req, daemon.mountpoint / rel.record.path)
    if req.path is not None:
        return await _compare_path(daemon, req)
    await _connected(rel)
    if req.mode == "snapshot" and rel.snapshots.basis(req.snapshot) is None:
        named = f"named {req.snapshot} " if req.snapshot else ""
        raise Refused(f"group {rel.record.id} has no common snapshot {named}with its replica ('fsrep snapshot "
                      f"MOUNTPOINT list' shows them); use '--mode checksum' instead")
    try:
        run = rel.request_resync(req.mode, reason="requested by fsrep-resync", rate_limit=req.rate_limit,
                                 snapshot=req.snapshot or "")
    except ValueError as exc:
        raise Refused(str(exc)) from None
    return ResyncStarted(group=rel.record.id, run=run.id, mode=run.mode, rate_limit=run.rate_limit)


async def _connected(rel: Relationship) -> None:
    """Raises Refused unless *rel* is connected (tried at once first)."""
    await rel.reconnect_now()
    if rel.conn is None:
        raise Refused(f"group {rel.record.id} is {rel.state.value} and its secondary {rel.record.secondary} is "
                      f"unreachable ({rel.link.last_error or 'not connected'}); a resync starts by itself when it is "
                      f"back")


async def _compare_path(daemon: Daemon, req: ResyncRequest) -> ResyncStarted:
    """Compare one path with the replica now (``_compare_path``), then
    resync what differs."""
    from ._compare_path import name_for_comparison  # here: a client importing this module pays for no trio
    assert req.path is not None
    group, path = daemon.groups.route(check_mount_path(req.path))
    rel = group.rel
    shown_path = "/" + req.path
    if rel.state is RelationshipState.SPLIT_BRAIN:
        raise Refused(f"group {rel.record.id} is SplitBrain: resolve it with --discard first")
    if rel.record.policy == "strict" and rel.state in (RelationshipState.IN_SYNC, RelationshipState.RESYNCING):
        raise Refused(f"group {rel.record.id} uses policy strict: while {shown_path} is compared, changes to it "
                      f"would fail with EIO — remount with --policy sync to run it")
    await _connected(rel)
    if req.restore:
        try:
            run = rel.request_resync("quick", reason=f"fsrep-resync --path {shown_path} --from secondary",
                                     restore=path, restore_into=str(daemon.mountpoint / rel.record.path))
        except ValueError as exc:
            raise Refused(str(exc)) from None
        return ResyncStarted(group=rel.record.id, run=run.id, mode=run.mode, rate_limit=run.rate_limit, files=1)
    try:
        named = await name_for_comparison(rel.stream, group.tree, path)
    except FileNotFoundError:
        raise Refused(f"{shown_path}: no such file or directory, nor its directory, in the mount") from None
    except OSError as exc:
        raise Refused(f"cannot compare {shown_path}: {exc.strerror or exc}") from None
    run = rel.request_resync("quick", reason=f"fsrep-resync --path {shown_path}")
    return ResyncStarted(group=rel.record.id, run=run.id, mode=run.mode, rate_limit=run.rate_limit,
                         files=named.files, bytes=named.bytes, directories=named.directories)


async def _discard(rel: Relationship, req: ResyncRequest, group_dir: Path) -> ResyncStarted:
    """Resolve a split brain by giving up one side, copied out first: the
    secondary's out of the replica (``KeepDivergent``), the primary's into
    this store (``_pull``); then the resync from the newest taken snapshot
    both sides hold makes them the same."""
    record = rel.record
    if rel.state is not RelationshipState.SPLIT_BRAIN or rel.conn is None:
        raise Refused(f"group {record.id} is {rel.state.value}{'' if rel.conn is not None else ', not connected'}: "
                      f"--discard gives up a side of a split brain, with both sides connected")
    sid = next((s for s in reversed(list(rel.snapshots.chain)) if not s.auto and rel.snapshots.common(s)), None)
    if sid is None:
        raise Refused(f"group {record.id} has no snapshot both sides took, so what diverged cannot be told and kept; "
                      f"'fsrep-resync --mode full' gives up the secondary's side without a copy")
    if req.discard == "primary":
        if record.policy == "strict":
            raise Refused(f"group {record.id} uses policy strict, which refuses changes while SplitBrain: remount "
                          f"with --policy sync to take the secondary's side")
        run = rel.request_resync("snapshot", reason=f"split brain: the primary's side is given up (kept first), "
                                                    f"the secondary's taken, from {sid.name}",
                                 rate_limit=req.rate_limit, snapshot=sid.name, pull_into=str(group_dir))
    else:
        run = rel.request_resync("snapshot", reason=f"split brain: the secondary's side is given up (kept first), "
                                                    f"from {sid.name}", rate_limit=req.rate_limit,
                                 snapshot=sid.name, keep_divergent=True)
    return ResyncStarted(group=record.id, run=run.id, mode=run.mode, rate_limit=run.rate_limit)


async def clone(daemon: Daemon, req: CloneRequest) -> Cloned:
    try:
        group, size, replicated = await daemon.ops.clone(req.inode, req.parent, os.fsencode(req.name))
    except OtherGroup as exc:
        return Cloned(group=exc.source, bytes=0, replicated=False, other_group=exc.destination)
    except OSError as exc:
        raise Refused(f"cannot clone: {exc.strerror or exc}") from None
    return Cloned(group=group, bytes=size, replicated=replicated)


async def move_group(daemon: Daemon, req: MoveRequest) -> Moved:
    from . import _move as move  # here: a client importing this module pays for none of the daemon's modules
    group = _group(daemon.groups, req.group)
    record = group.rel.record
    running = group.rel.move
    if running is not None and not running.outcome:
        raise Refused(f"group {record.id} (/{record.path}) is moving to {running.destination} already; wait for "
                      f"it, or stop it with fsrep-move --abort")
    try:
        if req.to_primary:
            from . import _move_primary as move_primary
            done = await move_primary.move_to_primary(group, req.to_primary, daemon.key, group.rel.timeouts,
                                                      daemon.groups, group.rel.ledger.groups, daemon.ops)
            return _moved(group, done)
        target = move.check_destination(req.to, group, daemon.store, daemon.mountpoint, daemon.groups)
        if move.across(target, group):
            import trio

            from . import _move_across as move_across
            await trio.to_thread.run_sync(move.check_room, target, group, daemon.groups)
            done = await move_across.move_across(group, target, daemon.store, group.rel.ledger.groups, daemon.ops)
        else:
            done = move.move(group, target, daemon.store, group.rel.ledger.groups, daemon.ops.tree)
    except move.MoveRefused as exc:
        raise Refused(f"group {record.id} (/{record.path}): {exc}") from None
    except OSError as exc:
        raise Refused(f"group {record.id} (/{record.path}) was moved to {req.to}, but its record could not be "
                      f"saved ({exc.strerror or exc}); the next mount finishes the move") from None
    return _moved(group, done)


def _moved(group: Group, done: Done) -> Moved:
    record, run = group.rel.record, group.rel.move
    copied = run is not None and run.destination == done.destination and run.outcome == "done"
    return Moved(group=record.id, path="/" + record.path, source=done.source, destination=done.destination,
                 seconds=round(done.seconds, 6), copied_bytes=run.copied_bytes if copied and run else 0,
                 pause_seconds=round(run.pause_seconds, 6) if copied and run else 0.0)


async def abort_move(daemon: Daemon, req: MoveAbortRequest) -> MoveAborted:
    group = _group(daemon.groups, req.group)
    record, run = group.rel.record, group.rel.move
    if record.move_unconfirmed and (run is None or run.outcome) and daemon.start is not None:
        from . import _move_primary as move_primary
        try:
            where = move_primary.reclaim(group.rel, group.rel.ledger.groups, daemon.start)
        except OSError as exc:
            raise Refused(f"cannot save the group's record ({exc.strerror or exc}); nothing changed") from None
        return MoveAborted(group=record.id, destination=where, reclaimed=True)
    if record.moved_to:
        raise Refused(f"group {record.id} (/{record.path}) moved to the primary at {record.moved_to}, which took "
                      f"it; move it back from there (fsrep-move --to-primary) if that is what you want")
    if run is None or run.outcome:
        raise Refused(f"group {record.id} (/{record.path}) is not moving; nothing to abort")
    if run.phase not in ("copying", "catching up", "cutting over"):
        raise Refused(f"the move of group {record.id} to {run.destination} has cut over already; move it back "
                      f"with fsrep-move --to {run.source} if that is what you want")
    run.abort.set()  # the mover says it in the log when it stops
    return MoveAborted(group=record.id, destination=run.destination)


async def create_snapshot(daemon: Daemon, req: SnapshotCreateRequest) -> SnapshotTaken:
    rel = _group(daemon.groups, req.group).rel
    try:
        sid = await rel.snapshots.create(req.name)
    except SnapshotError as exc:
        raise Refused(str(exc)) from None
    return SnapshotTaken(group=rel.record.id, snapshot=rel.snapshots.status(sid))


async def list_snapshots(daemon: Daemon, req: SnapshotListRequest) -> SnapshotList:
    return SnapshotList(groups=tuple(GroupSnapshots(group=g.rel.record.id, path="/" + g.rel.record.path,
                                                    snapshots=g.rel.snapshots.listing()) for g in daemon.groups.all))


async def delete_snapshot(daemon: Daemon, req: SnapshotDeleteRequest) -> SnapshotTaken:
    rel = _group(daemon.groups, req.group).rel
    sid = rel.snapshots.chain.find(req.name)
    if sid is None:
        raise Refused(f"group {rel.record.id} has no snapshot named {req.name} ('fsrep snapshot MOUNTPOINT list' "
                      f"shows them)")
    shown_before = rel.snapshots.status(sid)
    await rel.snapshots.delete(req.name)
    return SnapshotTaken(group=rel.record.id, snapshot=shown_before)


# --- the table -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command(Generic[ReplyT]):
    """One row of the table: how a command's request is read, and who
    answers it."""

    request: type[Request[ReplyT]]
    handler: Callable[[Any, Any], Awaitable[ReplyT]]  # (the daemon, its request)


COMMANDS: dict[str, Command[Any]] = {row.request.command: row for row in (
    Command(StatusRequest, show_status),
    Command(ResyncRequest, start_resync),
    Command(SnapshotCreateRequest, create_snapshot),
    Command(SnapshotListRequest, list_snapshots),
    Command(SnapshotDeleteRequest, delete_snapshot),
    Command(CloneRequest, clone),
    Command(MoveRequest, move_group),
    Command(MoveAbortRequest, abort_move),
)}


def parse_request(message: Any, table: dict[str, Command[Any]] = COMMANDS) -> Request[Any]:
    """The request the JSON value *message* makes (one of *table*'s).

    Raises:
        BadRequest: it is not an object naming a known command with the
            fields that command takes.
    """
    if not isinstance(message, dict):
        raise BadRequest(f"a request is a JSON object, not {shown(message)}")
    names = ", ".join(table)
    if "cmd" not in message:
        raise BadRequest(f'the request names no command: send {{"cmd": NAME, ...}} with NAME one of {names}')
    row = table.get(message["cmd"]) if isinstance(message["cmd"], str) else None
    if row is None:
        raise BadRequest(f"unknown command {shown(message['cmd'])}: use one of {names}")
    return row.request.from_json(message)


async def dispatch(daemon: Any, message: Any, table: dict[str, Command[Any]] = COMMANDS) -> dict[str, Any]:
    """The reply to *message*: the handler's record, or ``{"error": LINE}``
    for a bad or refused request. *daemon* is what *table*'s handlers take
    (the primary's ``Daemon`` for ``COMMANDS``)."""
    try:
        req = parse_request(message, table)
        reply = await table[req.command].handler(daemon, req)
    except BadRequest as exc:
        return {"error": f"bad request: {exc}"}
    except Refused as exc:
        return {"error": str(exc)}
    return reply.to_json()
