"""What ``fsrep status`` shows, as frozen records: a resync run's progress,
one consistency group's status, and the daemon's status around them.

The daemon builds them (``Relationship.statistics()``,
``ResyncRun.snapshot()``) and sends them over the control socket as JSON
(``Record.to_json()``); the client reads them back (``from_json()``) and
renders the table, ``--json`` and the resync progress from the same record.
The JSON keys are the field names, which operators and scripts read:
renaming a field changes the interface.

Pure data: no trio, no socket, so the client side imports it cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self, TypeVar


class UnreadableReply(ValueError):
    """Raised by ``from_json`` when a reply is not the record it should be
    (a daemon of another fsrep version, most likely)."""


def fields_of(cls: type, data: Any) -> dict[str, Any]:
    """The values of *cls*'s fields in the JSON object *data*.

    A field with a default may be missing (it came after the version of
    fsrep that sent *data*): it is left out, and takes its default.

    Raises:
        UnreadableReply: *data* is not an object, or lacks a field that has
            no default.
    """
    if not isinstance(data, dict):
        raise UnreadableReply(f"a {cls.__name__} is a JSON object, not {type(data).__name__}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
    if missing:
        raise UnreadableReply(f"the {cls.__name__} has no {', '.join(missing)}")
    return {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_R = TypeVar("_R", bound="Record")


class Record:
    """JSON in and out for a frozen record: ``to_json()`` is the object
    sent, ``from_json()`` reads it back (a record with nested records reads
    those itself)."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # each subclass is a dataclass

    @classmethod
    def from_json(cls, data: Any) -> Self:
        return cls(**fields_of(cls, data))


def _many(cls: type[_R], data: Any) -> tuple[_R, ...]:
    """The records of the JSON array *data*.

    Raises:
        UnreadableReply: *data* is not an array of such records.
    """
    if not isinstance(data, list | tuple):
        raise UnreadableReply(f"a list of {cls.__name__} is a JSON array, not {type(data).__name__}")
    return tuple(cls.from_json(item) for item in data)


@dataclass(frozen=True, slots=True)
class ResyncProgress(Record):
    """One resync run as the operator sees it (``ResyncRun.snapshot()``).
    ``outcome`` is "" until it ends, then "InSync" or why it failed;
    ``eta_seconds`` is None while not known."""

    id: int
    mode: str
    reason: str
    running: bool
    finished: bool
    outcome: str
    verified: bool
    restarts: int
    rate_limit: int
    bytes_copied: int
    bytes_checked: int
    bytes_mismatched: int
    bytes_remaining: int
    bytes_per_second: int
    directories_checked: int
    directories_remaining: int
    entries_checked: int
    eta_seconds: float | None
    percent: float
    elapsed_seconds: float
    snapshot: str  # mode snapshot: the snapshot it resyncs from
    kept: str = ""  # split brain: where the side given up was copied before it was overwritten
    kept_side: str = ""  # which side that was: "primary" or "secondary"
    clones_replayed: int = 0  # files cloned while out of sync that the replica cloned too, then compared
    bytes_replayed_as_clones: int = 0  # their size: data that did not cross the link as data
    restored: str = ""  # --path --from secondary: the file made here as the replica holds it


@dataclass(frozen=True, slots=True)
class QueuedRun(Record):
    """The run that starts when the one under way ends."""

    id: int
    mode: str
    restarts: int


@dataclass(frozen=True, slots=True)
class EndedRun(Record):
    """A run that ended recently (how a follower learns the end of a run
    another one superseded)."""

    id: int
    mode: str
    outcome: str
    verified: bool


@dataclass(frozen=True, slots=True)
class SnapshotStatus(Record):
    """One pseudo snapshot of a group: its name, when it was taken
    (seconds since the epoch), the position it marks, whether fsrep took
    it itself when the group left InSync (``auto``), whether the replica
    holds it too (``common``), and about how much changed here since it."""

    name: str
    created: float
    generation: str
    seq: int
    auto: bool
    common: bool
    changed_bytes: int


@dataclass(frozen=True, slots=True)
class GroupSnapshots(Record):
    """The snapshots of one group, oldest first."""

    group: str
    path: str
    snapshots: tuple[SnapshotStatus, ...]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        fields = fields_of(cls, data)
        fields["snapshots"] = _many(SnapshotStatus, fields["snapshots"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class SnapshotList(Record):
    """The reply to ``snapshot-list``: every group's snapshots."""

    groups: tuple[GroupSnapshots, ...]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        return cls(groups=_many(GroupSnapshots, fields_of(cls, data)["groups"]))


@dataclass(frozen=True, slots=True)
class Divergence(Record):
    """In split brain: what changed on each side since their newest common
    snapshot (files, and bytes of data), as far as each side's record
    says; -1 while the secondary's side is not known yet."""

    snapshot: str  # "" when there is none: what diverged cannot be told
    primary_files: int
    primary_bytes: int
    secondary_files: int
    secondary_bytes: int


@dataclass(frozen=True, slots=True)
class MoveProgress(Record):
    """A move of the group's data to another file system as the operator
    sees it (``_move_across.MoveRun``). ``phase``: copying, catching up,
    cutting over, removing the old copy, then done, aborted or failed
    (``outcome`` says why); ``eta_seconds`` is None while not known."""

    source: str
    destination: str
    phase: str
    finished: bool
    outcome: str
    bytes_copied: int
    bytes_total: int
    bytes_per_second: int
    eta_seconds: float | None
    passes: int
    pause_seconds: float
    seconds: float


@dataclass(frozen=True, slots=True)
class GroupStatus(Record):
    """One consistency group's relationship (``Relationship.statistics()``).

    ``bytes_remaining``, ``bytes_per_second``, ``eta_seconds`` and
    ``percent`` are the running resync's when there is one, else what a
    resync would have to move; ``resync`` is the last run's progress."""

    id: str
    path: str
    state: str
    policy: str
    secondary: str
    connected: bool
    last_acked_seq: int
    ops_in_flight: int
    lag_bytes: int
    lag_seconds: float
    bytes_in_flight: int
    dirty_bytes: int
    bytes_remaining: int
    bytes_per_second: int
    eta_seconds: float | None
    percent: float
    resync: ResyncProgress | None
    resync_queued: QueuedRun | None
    resync_recent: tuple[EndedRun, ...]
    resync_bytes_sent: int
    bytes_cloned: int
    last_resync_seconds: float
    generation: str
    stale_reason: str
    last_error: str
    faults: tuple[str, ...]  # what fails until it clears (a state file that cannot be saved), with why
    internal_errors: int
    snapshot: SnapshotStatus | None  # the newest common snapshot: where a resync can start from
    divergence: Divergence | None = None  # in split brain: what changed on each side since the common snapshot
    bytes_sent: int = 0  # file data sent to the secondary by this mount: replicated changes and resyncs
    data_dir: str = ""  # where the group's data lives when fsrep-move moved it out of the store
    move: MoveProgress | None = None  # the last move across file systems of this mount, under way or ended
    reconnects: int = 0  # sessions with the secondary established after the first one of this mount
    moved_to: str = ""  # HOST:PORT of the primary the group moved to (fsrep-move --to-primary): read-only here
    move_unconfirmed: bool = False  # ... which never said it took the group

    @classmethod
    def from_json(cls, data: Any) -> Self:
        fields = fields_of(cls, data)
        fields["resync"] = None if fields["resync"] is None else ResyncProgress.from_json(fields["resync"])
        fields["resync_queued"] = (None if fields["resync_queued"] is None
                                   else QueuedRun.from_json(fields["resync_queued"]))
        fields["resync_recent"] = _many(EndedRun, fields["resync_recent"])
        fields["faults"] = tuple(str(fault) for fault in fields["faults"] or ())
        fields["snapshot"] = None if fields["snapshot"] is None else SnapshotStatus.from_json(fields["snapshot"])
        if fields.get("divergence") is not None:
            fields["divergence"] = Divergence.from_json(fields["divergence"])
        if fields.get("move") is not None:
            fields["move"] = MoveProgress.from_json(fields["move"])
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class DaemonStatus(Record):
    """The reply to ``status``: the primary daemon and each of its groups,
    the default group first."""

    pid: int
    store: str
    mountpoint: str
    groups: tuple[GroupStatus, ...]

    @classmethod
    def from_json(cls, data: Any) -> Self:
        fields = fields_of(cls, data)
        fields["groups"] = _many(GroupStatus, fields["groups"])
        return cls(**fields)

    def group(self, group_id: str) -> GroupStatus | None:
        """The group with id *group_id*; None if the daemon has none."""
        return next((group for group in self.groups if group.id == group_id), None)
