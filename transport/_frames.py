"""Protocol events: one frozen dataclass per frame type.

How this works: every frame class declares ``FIELDS``, an ordered list of
(attribute, kind) pairs. The codec encodes and decodes any frame from that
list alone, so adding a frame type is adding a class here. Each class checks
its own values in ``__post_init__``, so an invalid frame can be neither built
nor decoded.

Paths are group-relative byte strings: components joined by ``/``, never
absolute, never ``.``/``..``/empty components, never NUL. ``b""`` names the
root of the group.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import ClassVar

from tracking import generations  # sans-IO: a Welcome carries the history just as tracking keeps it

from ._errors import InvalidPath, LocalProtocolError

PROTOCOL_VERSION = 11  # 2: generations in Welcome; Checksum, Digests, Generation. 3: Fsync.datasync. 4: WriteRuns.
# 5: Punch, ListData and DataMap (holes). 6: mtimes in data and namespace frames, SetAttr ATTR_MTIME.
# 7: pseudo snapshots: Snapshot, RetireSnapshot, SnapshotChanges, Changes; snapshots in Welcome
# 8: ResyncBegin (the replica opens its undo log); KeepDivergent and Kept (split brain: the replica keeps its side)
# 9: Fetch and Fetched (split brain, the primary's side given up: the primary pulls the replica's entries); Clone
# 10: Clone.flags (CLONE_REPLAY: a resync's replay of a clone made while out of sync)
# 11: Adopt and Adopted (fsrep-move --to-primary: the receiving primary takes the group over)
NONCE_SIZE = 32
PROOF_SIZE = 32
GROUP_ID_SIZE = 16
MAX_PATH = 64 * 1024  # relative to a group's root: deeper than PATH_MAX, as a tree reached by chdir can be
MAX_TARGET = 4096  # a symlink's target, as symlink(2) takes it
MAX_NAME = 255
MAX_DATA = 4 * 1024 * 1024
MAX_XATTR_VALUE = 64 * 1024
MAX_TEXT = 1024

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

# Field kinds understood by the codec.
U8, U32, U64, I64 = "u8", "u32", "u64", "i64"
PATH, BLOB, NAME, TEXT = "path", "blob", "name", "text"
NONCE, PROOF, GROUP_ID = "nonce", "proof", "group_id"

FIELD_LIMITS = {U8: 255, U32: U32_MAX, U64: U64_MAX}

# A time field (nanoseconds since the epoch) left unset: applying the frame
# leaves that time as the system call set it. Resync frames carry none; the
# resync sets times after the data and entries they concern.
NO_TIME = I64_MIN


def check_path(path: bytes, *, what: str = "path") -> None:
    """Raise InvalidPath unless *path* is a safe group-relative path
    (LocalProtocolError when it is not even bytes: a bug here)."""
    if not isinstance(path, bytes):
        raise LocalProtocolError(f"{what} must be bytes")
    if len(path) > MAX_PATH:
        raise InvalidPath(errno.ENAMETOOLONG, f"{what} longer than {MAX_PATH} bytes")
    if path == b"":
        return
    if b"\0" in path:
        raise InvalidPath(errno.EINVAL, f"{what} contains NUL")
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise InvalidPath(errno.EINVAL, f"{what} {path[:200]!r} is absolute or has an empty, '.' or '..' "
                                            f"component")
        if len(part) > MAX_NAME:
            raise InvalidPath(errno.ENAMETOOLONG, f"{what} has a component longer than {MAX_NAME} bytes")


def _check_fields(frame: object) -> None:
    for name, kind in frame.FIELDS:  # type: ignore[attr-defined]
        value = getattr(frame, name)
        if kind in FIELD_LIMITS:
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= FIELD_LIMITS[kind]:
                raise LocalProtocolError(f"{type(frame).__name__}.{name}={value!r} out of range for {kind}")
        elif kind == I64:
            if not isinstance(value, int) or not I64_MIN <= value <= I64_MAX:
                raise LocalProtocolError(f"{type(frame).__name__}.{name} out of range for i64")
        elif kind == PATH:
            check_path(value, what=f"{type(frame).__name__}.{name}")
        elif kind == BLOB:
            if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) > MAX_DATA:
                raise LocalProtocolError(f"{type(frame).__name__}.{name} must be bytes of at most {MAX_DATA}")
        elif kind == NAME:
            if not isinstance(value, bytes) or not 0 < len(value) <= MAX_NAME or b"\0" in value:
                raise LocalProtocolError(f"{type(frame).__name__}.{name} must be 1..{MAX_NAME} bytes without NUL")
        elif kind == TEXT:
            try:
                encoded = value.encode("utf-8") if isinstance(value, str) else None
            except UnicodeEncodeError:
                encoded = None
            if encoded is None or len(encoded) > MAX_TEXT:
                raise LocalProtocolError(
                    f"{type(frame).__name__}.{name} must be UTF-8 text of at most {MAX_TEXT} bytes")
        else:
            size = {NONCE: NONCE_SIZE, PROOF: PROOF_SIZE, GROUP_ID: GROUP_ID_SIZE}[kind]
            if not isinstance(value, bytes) or len(value) != size:
                raise LocalProtocolError(f"{type(frame).__name__}.{name} must be exactly {size} bytes")


class Frame:
    """Base of all frames; TYPE is the wire type code."""

    TYPE: ClassVar[int]
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]
    VIEWS: ClassVar[tuple[str, ...]] = ()  # blob fields a large frame decodes as views of its own buffer

    def __post_init__(self) -> None:
        _check_fields(self)


class Operation(Frame):
    """A replicated mutation. ``seq`` orders it within its group.

    ``TIMES`` names the mtimes a namespace change carries: (time field,
    path field, whether the time is of that path's parent directory). The
    primary fills them from its store right after applying the change; the
    replica sets them right after applying it, so in sequence order its
    times are the primary's. (Data frames carry the file's own ``mtime_ns``,
    which their handlers set through the file's descriptor.)"""

    seq: int
    BARRIER: ClassVar[bool] = False
    TIMES: ClassVar[tuple[tuple[str, str, bool], ...]] = ()

    def mtimes(self) -> list[tuple[bytes, int]]:
        """(path, mtime_ns) of each time of ``TIMES`` this frame carries, in order."""
        out = []
        for name, path_field, of_parent in self.TIMES:
            value = getattr(self, name)
            if value != NO_TIME:
                path = getattr(self, path_field)
                out.append((path.rpartition(b"/")[0] if of_parent else path, value))
        return out

    def payload_size(self) -> int:
        """Bytes of file data carried (counted as 'bytes in flight')."""
        return 0


# --- handshake -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """Primary -> secondary: which group, and the primary's challenge nonce."""

    TYPE = 1
    FIELDS = (("group_id", GROUP_ID), ("nonce", NONCE))
    group_id: bytes
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Challenge(Frame):
    """Secondary -> primary: its own nonce and its proof of the key."""

    TYPE = 2
    FIELDS = (("nonce", NONCE), ("proof", PROOF))
    nonce: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class Proof(Frame):
    """Primary -> secondary: the primary's proof of the key."""

    TYPE = 3
    FIELDS = (("proof", PROOF),)
    proof: bytes


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    """Secondary -> primary: authenticated; where the replica stands.

    ``last_seq`` is the last sequence number the replica has durably applied;
    ``fresh`` is 1 when the replica was created by this handshake;
    ``generations`` is its generation id history, oldest first, as
    ``tracking.generations.pack`` lays it out; ``snapshots`` the pseudo
    snapshots it holds, as ``pack_snapshots`` lays them out.
    """

    TYPE = 4
    FIELDS = (("last_seq", U64), ("fresh", U8), ("generations", BLOB), ("snapshots", BLOB))
    last_seq: int
    fresh: int
    generations: bytes = b""
    snapshots: bytes = b""

    def __post_init__(self) -> None:
        _check_fields(self)
        try:
            generations.unpack(self.generations)
        except ValueError as exc:
            raise LocalProtocolError(f"Welcome.generations: {exc}") from None
        unpack_snapshots(self.snapshots)

    def snapshot_list(self) -> list[tuple[str, int]]:
        return unpack_snapshots(self.snapshots)


MAX_SNAPSHOT_NAME = 64
MAX_SNAPSHOT_LIST = 256
_SNAPSHOT_ENTRY = struct.Struct(">QB")


def _check_snapshot_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name or len(name.encode("utf-8", "replace")) > MAX_SNAPSHOT_NAME \
            or not name.isascii() or not name.isprintable() or "/" in name:
        raise LocalProtocolError(f"{what} must be 1..{MAX_SNAPSHOT_NAME} printable ASCII characters")


def pack_snapshots(snapshots: list[tuple[str, int]]) -> bytes:
    """(name, seq) of each snapshot, as a Welcome carries them."""
    out = []
    for name, seq in snapshots:
        _check_snapshot_name(name, "snapshot name")
        out.append(_SNAPSHOT_ENTRY.pack(seq, len(name)) + name.encode("ascii"))
    return b"".join(out)


def unpack_snapshots(blob: bytes) -> list[tuple[str, int]]:
    """Raises LocalProtocolError when *blob* is not a list of snapshots."""
    found: list[tuple[str, int]] = []
    pos = 0
    try:
        while pos < len(blob):
            seq, n = _SNAPSHOT_ENTRY.unpack_from(blob, pos)
            pos += _SNAPSHOT_ENTRY.size
            raw = bytes(blob[pos:pos + n])
            if len(raw) != n:
                raise LocalProtocolError("truncated snapshot name")
            pos += n
            name = raw.decode("ascii", "replace")
            _check_snapshot_name(name, "snapshot name")
            found.append((name, seq))
    except struct.error:
        raise LocalProtocolError("truncated snapshot list") from None
    if len(found) > MAX_SNAPSHOT_LIST:
        raise LocalProtocolError(f"more than {MAX_SNAPSHOT_LIST} snapshots")
    return found


# --- operations --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Write(Operation):
    """``mtime_ns``: the file's mtime on the primary once the data was written."""

    TYPE = 10
    FIELDS = (("seq", U64), ("path", PATH), ("offset", U64), ("data", BLOB), ("mtime_ns", I64))
    VIEWS = ("data",)
    seq: int
    path: bytes
    offset: int
    data: bytes | memoryview
    mtime_ns: int = NO_TIME

    def payload_size(self) -> int:
        return len(self.data)


_RUN = struct.Struct(">QQ")  # one run of WriteRuns: offset, length
RUN_SIZE = _RUN.size
MAX_RUNS = 256


@dataclass(frozen=True, slots=True)
class WriteRuns(Operation):
    """Several writes to one file in one frame: the runs a resync copies
    from scattered dirty regions. ``runs`` holds (offset, length) pairs,
    ``data`` their bytes one after another. A random 1% of a large file is
    thousands of short runs; one frame for many of them spares both sides
    a frame's cost per run. ``mtime_ns``: the file's on the primary when
    the runs were read."""

    TYPE = 29
    FIELDS = (("seq", U64), ("path", PATH), ("runs", BLOB), ("data", BLOB), ("mtime_ns", I64))
    VIEWS = ("data",)
    seq: int
    path: bytes
    runs: bytes
    data: bytes | memoryview
    mtime_ns: int = NO_TIME

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.runs or len(self.runs) % _RUN.size or len(self.runs) > MAX_RUNS * _RUN.size:
            raise LocalProtocolError(f"WriteRuns.runs must be 1..{MAX_RUNS} runs of {_RUN.size} bytes")
        total = 0
        for offset, length in _RUN.iter_unpack(self.runs):
            if offset + length > U64_MAX:
                raise LocalProtocolError("WriteRuns run ends past the largest offset")
            total += length
        if total != len(self.data):
            raise LocalProtocolError(f"WriteRuns runs add up to {total} bytes but data holds {len(self.data)}")

    @classmethod
    def of(cls, seq: int, path: bytes, pieces: list[tuple[int, bytes]], mtime_ns: int = NO_TIME) -> WriteRuns:
        """The frame writing each (offset, bytes) of *pieces*."""
        return cls(seq=seq, path=path, runs=b"".join(_RUN.pack(offset, len(data)) for offset, data in pieces),
                   data=b"".join(data for _, data in pieces), mtime_ns=mtime_ns)

    def pieces(self) -> list[tuple[int, memoryview]]:
        """(offset, bytes) of each run, the bytes views of ``data``."""
        view, at, out = memoryview(self.data), 0, []
        for offset, length in _RUN.iter_unpack(self.runs):
            out.append((offset, view[at:at + length]))
            at += length
        return out

    def payload_size(self) -> int:
        return len(self.data)


def _check_runs(runs: bytes, what: str, *, allow_none: bool = False) -> list[tuple[int, int]]:
    """The (offset, length) pairs of a runs blob, each ending at or before
    the largest offset, in order and apart."""
    if len(runs) % _RUN.size or len(runs) > MAX_RUNS * _RUN.size or (not runs and not allow_none):
        raise LocalProtocolError(f"{what} must be {0 if allow_none else 1}..{MAX_RUNS} runs of {_RUN.size} bytes")
    out = list(_RUN.iter_unpack(runs))
    end = 0
    for offset, length in out:
        if offset + length > U64_MAX or not length or offset < end:
            raise LocalProtocolError(f"{what} holds an empty, overlapping or unordered run, or one past the "
                                     f"largest offset")
        end = offset + length
    return out


def pack_runs(runs: list[tuple[int, int]]) -> bytes:
    return b"".join(_RUN.pack(offset, length) for offset, length in runs)


@dataclass(frozen=True, slots=True)
class Punch(Operation):
    """Make each (offset, length) run of ``runs`` in file ``path`` read as
    zeros without allocating it (the file's size stays): how a resync
    copies a hole, so sparse files stay sparse. ``mtime_ns`` as for
    WriteRuns."""

    TYPE = 39
    FIELDS = (("seq", U64), ("path", PATH), ("runs", BLOB), ("mtime_ns", I64))
    seq: int
    path: bytes
    runs: bytes
    mtime_ns: int = NO_TIME

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_runs(self.runs, "Punch.runs")

    def run_list(self) -> list[tuple[int, int]]:
        return list(_RUN.iter_unpack(self.runs))


@dataclass(frozen=True, slots=True)
class ListData(Operation):
    """Ask where file ``path`` holds data within ``length`` bytes from
    ``offset``, at this point of the operation stream; the secondary
    answers with a DataMap before it acks. A checksum resync compares by
    digest only where either side holds data."""

    TYPE = 40
    FIELDS = (("seq", U64), ("path", PATH), ("offset", U64), ("length", U64))
    seq: int
    path: bytes
    offset: int
    length: int

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.offset + self.length > U64_MAX:
            raise LocalProtocolError("ListData ends past the largest offset")


@dataclass(frozen=True, slots=True)
class DataMap(Frame):
    """Secondary -> primary: the data runs asked for by ListData ``seq``,
    in order, and ``end``: how far they cover (short of the range asked
    for when more runs than fit in one frame follow)."""

    TYPE = 41
    FIELDS = (("seq", U64), ("end", U64), ("runs", BLOB))
    seq: int
    end: int
    runs: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        runs = _check_runs(self.runs, "DataMap.runs", allow_none=True)
        if runs and runs[-1][0] + runs[-1][1] > self.end:
            raise LocalProtocolError("DataMap.runs reach past its end")

    def run_list(self) -> list[tuple[int, int]]:
        return list(_RUN.iter_unpack(self.runs))


# SetAttr.fields bits. ATTR_TIMES sets atime_ns and mtime_ns; ATTR_MTIME
# mtime_ns alone, atime left as it is (what a truncate carries: the mtime
# the primary's store gave the file).
ATTR_MODE, ATTR_UID, ATTR_GID, ATTR_SIZE, ATTR_TIMES, ATTR_MTIME = 1, 2, 4, 8, 16, 32
ATTR_ALL = ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_SIZE | ATTR_TIMES  # every attribute, in one frame


@dataclass(frozen=True, slots=True)
class SetAttr(Operation):
    """chmod, chown, truncate and utimens in one frame; ``fields`` says which."""

    TYPE = 11
    FIELDS = (("seq", U64), ("path", PATH), ("fields", U32), ("mode", U32), ("uid", U32),
              ("gid", U32), ("size", U64), ("atime_ns", I64), ("mtime_ns", I64))
    seq: int
    path: bytes
    fields: int
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.fields & ~(ATTR_ALL | ATTR_MTIME) or not self.fields:
            raise LocalProtocolError(f"SetAttr.fields={self.fields:#x} has unknown or no bits")
        if self.fields & ATTR_TIMES and self.fields & ATTR_MTIME:
            raise LocalProtocolError("SetAttr.fields has both ATTR_TIMES and ATTR_MTIME")


@dataclass(frozen=True, slots=True)
class Create(Operation):
    """A new regular file (the FUSE create call)."""

    TYPE = 12
    FIELDS = (("seq", U64), ("path", PATH), ("mode", U32), ("uid", U32), ("gid", U32), ("mtime_ns", I64),
              ("parent_mtime_ns", I64))
    TIMES = (("mtime_ns", "path", False), ("parent_mtime_ns", "path", True))
    seq: int
    path: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int = NO_TIME
    parent_mtime_ns: int = NO_TIME


CLONE_REPLAY = 1


@dataclass(frozen=True, slots=True)
class Clone(Operation):
    """A new regular file ``path`` holding what file ``src`` holds (``fsrep
    clone``): each side copies its own, a reflink where the file system
    can — no data crosses the link.

    With CLONE_REPLAY (a resync replaying a clone made while out of sync)
    a source the replica no longer holds as a regular file makes an empty
    file instead of an error: the resync compares the copy by digest
    afterwards and sends what differs, so a wrong guess costs bytes, never
    correctness."""

    TYPE = 51
    FIELDS = (("seq", U64), ("src", PATH), ("path", PATH), ("mode", U32), ("uid", U32), ("gid", U32),
              ("flags", U32), ("mtime_ns", I64), ("parent_mtime_ns", I64))
    TIMES = (("mtime_ns", "path", False), ("parent_mtime_ns", "path", True))
    seq: int
    src: bytes
    path: bytes
    mode: int
    uid: int
    gid: int
    flags: int = 0
    mtime_ns: int = NO_TIME
    parent_mtime_ns: int = NO_TIME

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.path or not self.src:
            raise LocalProtocolError("Clone of or onto the group root")
        if self.flags & ~CLONE_REPLAY:
            raise LocalProtocolError(f"unknown Clone flags {self.flags:#x}")


@dataclass(frozen=True, slots=True)
class MkNod(Operation):
    TYPE = 13
    FIELDS = (("seq", U64), ("path", PATH), ("mode", U32), ("rdev", U64), ("uid", U32), ("gid", U32),
              ("mtime_ns", I64), ("parent_mtime_ns", I64))
    TIMES = (("mtime_ns", "path", False), ("parent_mtime_ns", "path", True))
    seq: int
    path: bytes
    mode: int
    rdev: int
    uid: int
    gid: int
    mtime_ns: int = NO_TIME
    parent_mtime_ns: int = NO_TIME


@dataclass(frozen=True, slots=True)
class MkDir(Operation):
    TYPE = 14
    FIELDS = (("seq", U64), ("path", PATH), ("mode", U32), ("uid", U32), ("gid", U32), ("mtime_ns", I64),
              ("parent_mtime_ns", I64))
    TIMES = (("mtime_ns", "path", False), ("parent_mtime_ns", "path", True))
    seq: int
    path: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int = NO_TIME
    parent_mtime_ns: int = NO_TIME


@dataclass(frozen=True, slots=True)
class Unlink(Operation):
    TYPE = 15
    FIELDS = (("seq", U64), ("path", PATH), ("parent_mtime_ns", I64))
    TIMES = (("parent_mtime_ns", "path", True),)
    seq: int
    path: bytes
    parent_mtime_ns: int = NO_TIME


@dataclass(frozen=True, slots=True)
class RmDir(Operation):
    TYPE = 16
    FIELDS = (("seq", U64), ("path", PATH), ("parent_mtime_ns", I64))
    TIMES = (("parent_mtime_ns", "path", True),)
    seq: int
    path: bytes
    parent_mtime_ns: int = NO_TIME


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


@dataclass(frozen=True, slots=True)
class Rename(Operation):
    TYPE = 17
    FIELDS = (("seq", U64), ("old", PATH), ("new", PATH), ("flags", U32), ("old_parent_mtime_ns", I64),
              ("new_parent_mtime_ns", I64))
    TIMES = (("old_parent_mtime_ns", "old", True), ("new_parent_mtime_ns", "new", True))
    seq: int
    old: bytes
    new: bytes
    flags: int = 0
    old_parent_mtime_ns: int = NO_TIME
    new_parent_mtime_ns: int = NO_TIME

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise LocalProtocolError(f"Rename.flags={self.flags:#x} has unknown bits")


@dataclass(frozen=True, slots=True)
class Link(Operation):
    """A hard link: ``new`` becomes another name of ``target``."""

    TYPE = 18
    FIELDS = (("seq", U64), ("target", PATH), ("new", PATH), ("parent_mtime_ns", I64))
    TIMES = (("parent_mtime_ns", "new", True),)  # the target's ctime changes, never its mtime
    seq: int
    target: bytes
    new: bytes
    parent_mtime_ns: int = NO_TIME


@dataclass(frozen=True, slots=True)
class Symlink(Operation):
    """``target`` is stored verbatim; the secondary never follows it."""

    TYPE = 19
    FIELDS = (("seq", U64), ("path", PATH), ("target", BLOB), ("uid", U32), ("gid", U32), ("mtime_ns", I64),
              ("parent_mtime_ns", I64))
    TIMES = (("mtime_ns", "path", False), ("parent_mtime_ns", "path", True))
    seq: int
    path: bytes
    target: bytes
    uid: int
    gid: int
    mtime_ns: int = NO_TIME
    parent_mtime_ns: int = NO_TIME

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.target or len(self.target) > MAX_TARGET or b"\0" in self.target:
            raise LocalProtocolError(f"Symlink.target must be 1..{MAX_TARGET} bytes without NUL")


@dataclass(frozen=True, slots=True)
class SetXattr(Operation):
    TYPE = 20
    FIELDS = (("seq", U64), ("path", PATH), ("name", NAME), ("value", BLOB))
    seq: int
    path: bytes
    name: bytes
    value: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.value) > MAX_XATTR_VALUE:
            raise LocalProtocolError(f"SetXattr.value longer than {MAX_XATTR_VALUE} bytes")


@dataclass(frozen=True, slots=True)
class RemoveXattr(Operation):
    TYPE = 21
    FIELDS = (("seq", U64), ("path", PATH), ("name", NAME))
    seq: int
    path: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class Fsync(Operation):
    """Barrier: the secondary makes ``path`` durable before acking it
    (``b""`` with ``whole=1``: the whole replica); with ``datasync=1`` its
    data only, as fdatasync(2) does."""

    TYPE = 22
    BARRIER = True
    FIELDS = (("seq", U64), ("path", PATH), ("whole", U8), ("datasync", U8))
    seq: int
    path: bytes
    whole: int = 0
    datasync: int = 0


@dataclass(frozen=True, slots=True)
class Purge(Operation):
    """Empty the replica root: the first step of a full resync, after which
    the primary sends its whole tree."""

    TYPE = 23
    BARRIER = True
    FIELDS = (("seq", U64),)
    seq: int


@dataclass(frozen=True, slots=True)
class Remove(Operation):
    """Make sure nothing is at ``path`` (a whole subtree if a directory);
    used by resync to drop what the primary no longer has."""

    TYPE = 25
    FIELDS = (("seq", U64), ("path", PATH))
    seq: int
    path: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        if not self.path:
            raise LocalProtocolError("Remove of the group root")


@dataclass(frozen=True, slots=True)
class ListDir(Operation):
    """Ask for the entries of directory ``path`` after name ``after``
    (b"" for the first page), at this point of the operation stream. The
    secondary answers with a Listing before it acks."""

    TYPE = 24
    FIELDS = (("seq", U64), ("path", PATH), ("after", BLOB))
    seq: int
    path: bytes
    after: bytes = b""

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.after:
            check_name(self.after, what="ListDir.after")


@dataclass(frozen=True, slots=True)
class KeepXattrs(Operation):
    """Remove every extended attribute of ``path`` not named in ``names``
    (NUL-separated): how resync drops attributes removed while out of sync."""

    TYPE = 28
    FIELDS = (("seq", U64), ("path", PATH), ("names", BLOB))
    seq: int
    path: bytes
    names: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        for name in self.name_list():
            if not 0 < len(name) <= MAX_NAME:
                raise LocalProtocolError(f"KeepXattrs.names holds a name of {len(name)} bytes")

    def name_list(self) -> list[bytes]:
        return self.names.split(b"\0") if self.names else []


@dataclass(frozen=True, slots=True)
class Generation(Operation):
    """The primary's data is now at ``generation``: the replica records it
    in its history once everything before it is applied."""

    TYPE = 27
    FIELDS = (("seq", U64), ("generation", GROUP_ID))
    seq: int
    generation: bytes


@dataclass(frozen=True, slots=True)
class Snapshot(Operation):
    """Take pseudo snapshot ``name`` here, at this point of the stream:
    the replica records it (``created``: seconds since the epoch, as the
    primary took it) and starts recording what changes since."""

    TYPE = 42
    FIELDS = (("seq", U64), ("name", TEXT), ("created", I64))
    seq: int
    name: str
    created: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_snapshot_name(self.name, "Snapshot.name")


@dataclass(frozen=True, slots=True)
class ResyncBegin(Operation):
    """A resync starts writing here: the replica makes its data durable and
    keeps what the changes after this overwrite (its undo log), until the
    Generation that ends the resync."""

    TYPE = 46
    BARRIER = True
    FIELDS = (("seq", U64),)
    seq: int


@dataclass(frozen=True, slots=True)
class KeepDivergent(Operation):
    """Before a resync gives up the replica's side of a split brain: copy
    what changed on the replica since snapshot ``name`` (the regions and
    entries its record names, as plain files at the same paths) out of the
    replica, into the secondary store's ``.fsrep/divergent/``. Answered
    with Kept; changes nothing in the replica."""

    TYPE = 47
    FIELDS = (("seq", U64), ("name", TEXT))
    seq: int
    name: str

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_snapshot_name(self.name, "KeepDivergent.name")


@dataclass(frozen=True, slots=True)
class RetireSnapshot(Operation):
    """Forget pseudo snapshot ``name`` (what changed since it stays
    recorded for the snapshot before it)."""

    TYPE = 43
    FIELDS = (("seq", U64), ("name", TEXT))
    seq: int
    name: str

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_snapshot_name(self.name, "RetireSnapshot.name")


@dataclass(frozen=True, slots=True)
class SnapshotChanges(Operation):
    """Ask what changed on the replica since snapshot ``name``: the paths
    after path ``after`` (``started`` 0: from the first), at this point of
    the stream. The secondary answers with Changes before it acks."""

    TYPE = 44
    FIELDS = (("seq", U64), ("name", TEXT), ("started", U8), ("after", PATH))
    seq: int
    name: str
    started: int = 0
    after: bytes = b""

    def __post_init__(self) -> None:
        _check_fields(self)
        _check_snapshot_name(self.name, "SnapshotChanges.name")


CHANGE_META, CHANGE_DIR, CHANGE_WHOLE = 1, 2, 4  # flags of one change (tracking.META, DIR, WHOLE)
MAX_CHANGES = 1024 * 1024  # bytes of changes in one Changes frame
MAX_CHANGE_RUNS = 8192  # runs of one path (tracking.MAX_RUNS_PER_CHANGE: more are sent whole)
_CHANGE = struct.Struct(">IBI")  # path length, flags, run count
_REGION_RUN = struct.Struct(">QQ")  # first region, count
MAX_REGION = 2**52  # regions of a 64-bit file at 4 KiB (tracking.MAX_REGIONS)


def encode_changes(changes: list[tuple[bytes, int, list[tuple[int, int]]]]) -> bytes:
    """(path, flags, [(first region, count)]) of each changed path."""
    out = []
    for path, flags, runs in changes:
        check_path(path, what="Changes path")
        out.append(_CHANGE.pack(len(path), flags, len(runs)) + path)
        out.extend(_REGION_RUN.pack(first, count) for first, count in runs)
    return b"".join(out)


def decode_changes(blob: bytes) -> list[tuple[bytes, int, list[tuple[int, int]]]]:
    """Raises LocalProtocolError when *blob* is not a list of changes."""
    found = []
    pos = 0
    try:
        while pos < len(blob):
            n, flags, count = _CHANGE.unpack_from(blob, pos)
            pos += _CHANGE.size
            if flags & ~(CHANGE_META | CHANGE_DIR | CHANGE_WHOLE) or count > MAX_CHANGE_RUNS or n > MAX_PATH:
                raise LocalProtocolError("malformed change")
            path = bytes(blob[pos:pos + n])
            if len(path) != n:
                raise LocalProtocolError("truncated change")
            check_path(path, what="Changes path")
            pos += n
            runs = []
            for _ in range(count):
                first, length = _REGION_RUN.unpack_from(blob, pos)
                pos += _REGION_RUN.size
                if first + length > MAX_REGION:
                    raise LocalProtocolError("a changed region lies past the largest offset")
                runs.append((first, length))
            found.append((path, flags, runs))
    except struct.error:
        raise LocalProtocolError("truncated change") from None
    return found


@dataclass(frozen=True, slots=True)
class Changes(Frame):
    """Secondary -> primary: the answer to SnapshotChanges ``seq``.
    ``found`` 0: the replica holds no such snapshot; ``more`` 1: another
    page follows a SnapshotChanges after the last path."""

    TYPE = 45
    FIELDS = (("seq", U64), ("found", U8), ("more", U8), ("entries", BLOB))
    seq: int
    found: int
    more: int
    entries: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.entries) > MAX_CHANGES + MAX_PATH + MAX_CHANGE_RUNS * _REGION_RUN.size + _CHANGE.size:
            raise LocalProtocolError("Changes frame too large")
        decode_changes(self.entries)

    def items(self) -> list[tuple[bytes, int, list[tuple[int, int]]]]:
        return decode_changes(self.entries)


@dataclass(frozen=True, slots=True)
class Kept(Frame):
    """Secondary -> primary: the answer to KeepDivergent ``seq``: how many
    entries and bytes of data were copied, and where (``found`` 0: the
    replica holds no such snapshot, and nothing was copied)."""

    TYPE = 48
    FIELDS = (("seq", U64), ("found", U8), ("entries", U64), ("data", U64), ("where", TEXT))
    seq: int
    found: int
    entries: int
    data: int
    where: str


MAX_ADOPT_STATE = 64 * 1024  # bytes of the group's state an Adopt carries (JSON)
ADOPT_ASK, ADOPT_TAKE = 0, 1  # Adopt.take


@dataclass(frozen=True, slots=True)
class Adopt(Operation):
    """``fsrep-move --to-primary``: the peer is a primary that accepts
    moves (``fsrep mount --accept-moves``), and the stream so far made its
    copy of the group. ``take`` ADOPT_ASK: could it take the group as
    ``state`` describes (its path there free)? ADOPT_TAKE: take it now —
    serve the copy as the group, relating to the group's secondary from
    the state's common snapshot. ``state`` is a JSON object (the group's
    record). Answered with Adopted; the replica is not changed by it."""

    TYPE = 52
    FIELDS = (("seq", U64), ("take", U8), ("state", BLOB))
    seq: int
    take: int
    state: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.take not in (ADOPT_ASK, ADOPT_TAKE):
            raise LocalProtocolError(f"Adopt.take={self.take} is neither ask nor take")
        if len(self.state) > MAX_ADOPT_STATE:
            raise LocalProtocolError(f"Adopt.state longer than {MAX_ADOPT_STATE} bytes")


@dataclass(frozen=True, slots=True)
class Adopted(Frame):
    """The answer to Adopt ``seq``: ``ok`` 1 when it could (ask) or did
    (take); else ``message`` says why not, in one line, and nothing was
    changed."""

    TYPE = 53
    FIELDS = (("seq", U64), ("ok", U8), ("message", TEXT))
    seq: int
    ok: int
    message: str = ""


MAX_FETCH = 1024 * 1024  # bytes of data one Fetched carries
_XATTR = struct.Struct(">BI")  # name length, value length


@dataclass(frozen=True, slots=True)
class Fetch(Operation):
    """Ask for entry ``path`` of the replica as it is — kind, attributes,
    symlink target, extended attributes — and up to ``length`` bytes of its
    data from ``offset``, at this point of the stream: how the primary
    pulls the replica's side of a split brain when its own is given up.
    Answered with Fetched before the ack; nothing is applied."""

    TYPE = 49
    FIELDS = (("seq", U64), ("path", PATH), ("offset", U64), ("length", U32))
    seq: int
    path: bytes
    offset: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.length > MAX_FETCH:
            raise LocalProtocolError(f"Fetch.length {self.length} is over {MAX_FETCH}")


def pack_xattrs(xattrs: list[tuple[bytes, bytes]]) -> bytes:
    """(name, value) pairs as one blob."""
    out = []
    for name, value in xattrs:
        if not 0 < len(name) <= MAX_NAME or len(value) > MAX_XATTR_VALUE:
            raise LocalProtocolError("extended attribute name or value too long")
        out.append(_XATTR.pack(len(name), len(value)) + name + value)
    return b"".join(out)


def unpack_xattrs(blob: bytes) -> list[tuple[bytes, bytes]]:
    """Raises LocalProtocolError when *blob* is not a list of attributes."""
    found, pos = [], 0
    try:
        while pos < len(blob):
            n, size = _XATTR.unpack_from(blob, pos)
            pos += _XATTR.size
            if not 0 < n <= MAX_NAME or size > MAX_XATTR_VALUE or pos + n + size > len(blob):
                raise LocalProtocolError("malformed extended attribute")
            name, value = bytes(blob[pos:pos + n]), bytes(blob[pos + n:pos + n + size])
            if b"\0" in name:
                raise LocalProtocolError("extended attribute name contains NUL")
            found.append((name, value))
            pos += n + size
    except struct.error:
        raise LocalProtocolError("truncated extended attribute") from None
    return found


@dataclass(frozen=True, slots=True)
class Fetched(Frame):
    """Secondary -> primary: the answer to Fetch ``seq`` (``found`` 0: no
    such entry). ``data`` holds the bytes from the offset asked for (holes
    as zeros), fewer only at the end of the file."""

    TYPE = 50
    FIELDS = (("seq", U64), ("found", U8), ("mode", U32), ("uid", U32), ("gid", U32), ("rdev", U64),
              ("size", U64), ("atime_ns", I64), ("mtime_ns", I64), ("target", BLOB), ("xattrs", BLOB),
              ("data", BLOB))
    seq: int
    found: int
    mode: int = 0
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    target: bytes = b""
    xattrs: bytes = b""
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.target) > MAX_TARGET or len(self.data) > MAX_FETCH:
            raise LocalProtocolError("Fetched target or data too long")
        unpack_xattrs(self.xattrs)

    def xattr_list(self) -> list[tuple[bytes, bytes]]:
        return unpack_xattrs(self.xattrs)


MAX_CHECKSUM_REGIONS = 4096
DIGEST_SIZE = 8


@dataclass(frozen=True, slots=True)
class Checksum(Operation):
    """Ask for the xxh3-64 digests of ``count`` 4 KiB regions of file
    ``path`` from byte ``offset``, at this point of the operation stream
    (the primary digests its own copy in the same step it sends this).
    The secondary answers with Digests before it acks."""

    TYPE = 26
    FIELDS = (("seq", U64), ("path", PATH), ("offset", U64), ("count", U32))
    seq: int
    path: bytes
    offset: int
    count: int

    def __post_init__(self) -> None:
        _check_fields(self)
        if not 0 < self.count <= MAX_CHECKSUM_REGIONS:
            raise LocalProtocolError(f"Checksum.count must be 1..{MAX_CHECKSUM_REGIONS}")


@dataclass(frozen=True, slots=True)
class Digests(Frame):
    """Secondary -> primary: one 8-byte digest per region asked for by
    Checksum ``seq``."""

    TYPE = 38
    FIELDS = (("seq", U64), ("digests", BLOB))
    seq: int
    digests: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.digests) % DIGEST_SIZE or len(self.digests) > MAX_CHECKSUM_REGIONS * DIGEST_SIZE:
            raise LocalProtocolError(f"Digests.digests must be whole {DIGEST_SIZE}-byte digests, "
                                     f"at most {MAX_CHECKSUM_REGIONS}")


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a Listing: what resync compares."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    nlink: int


_ENTRY = struct.Struct(">IIIQqI")
MAX_LISTING = 1024 * 1024


def check_name(name: bytes, *, what: str = "name") -> None:
    """Raise LocalProtocolError unless *name* is one safe path component."""
    if not isinstance(name, bytes) or not 0 < len(name) <= MAX_NAME or b"/" in name or b"\0" in name \
            or name in (b".", b".."):
        raise LocalProtocolError(f"{what} is not a single path component")


def encode_entries(entries: list[DirEntry]) -> bytes:
    out = []
    for e in entries:
        check_name(e.name, what="DirEntry.name")
        out.append(bytes((len(e.name),)) + e.name + _ENTRY.pack(e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.nlink))
    return b"".join(out)


def decode_entries(blob: bytes) -> list[DirEntry]:
    """Raises LocalProtocolError when *blob* is not a list of entries."""
    entries = []
    pos = 0
    try:
        while pos < len(blob):
            n = blob[pos]
            name = bytes(blob[pos + 1:pos + 1 + n])
            check_name(name, what="DirEntry.name")
            fields = _ENTRY.unpack_from(blob, pos + 1 + n)
            entries.append(DirEntry(name, *fields))
            pos += 1 + n + _ENTRY.size
    except struct.error:
        raise LocalProtocolError("truncated directory entry") from None
    return entries


@dataclass(frozen=True, slots=True)
class Listing(Frame):
    """Secondary -> primary: the entries asked for by ListDir ``seq``;
    ``more`` says another page follows a ListDir after the last name."""

    TYPE = 36
    FIELDS = (("seq", U64), ("more", U8), ("entries", BLOB))
    seq: int
    more: int
    entries: bytes

    def __post_init__(self) -> None:
        _check_fields(self)
        decode_entries(self.entries)

    def items(self) -> list[DirEntry]:
        return decode_entries(self.entries)


# --- stream control ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """Cumulative: every operation up to and including ``seq`` is applied."""

    TYPE = 30
    FIELDS = (("seq", U64),)
    seq: int


@dataclass(frozen=True, slots=True)
class Nack(Frame):
    """Operation ``seq`` failed on the secondary; nothing after it is applied."""

    TYPE = 31
    FIELDS = (("seq", U64), ("errno", U32), ("message", TEXT))
    seq: int
    errno: int
    message: str


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    TYPE = 32
    FIELDS = (("token", U64),)
    token: int


@dataclass(frozen=True, slots=True)
class Pong(Frame):
    TYPE = 33
    FIELDS = (("token", U64),)
    token: int


@dataclass(frozen=True, slots=True)
class Durable(Frame):
    """Secondary -> primary: everything up to ``seq`` is on stable storage
    and recorded as the replica's position (it survives a crash)."""

    TYPE = 37
    FIELDS = (("seq", U64),)
    seq: int


@dataclass(frozen=True, slots=True)
class Close(Frame):
    """Orderly end: the sender has nothing more after ``last_seq``."""

    TYPE = 34
    FIELDS = (("last_seq", U64),)
    last_seq: int


@dataclass(frozen=True, slots=True)
class Error(Frame):
    """Sent just before dropping the connection, saying why."""

    TYPE = 35
    FIELDS = (("message", TEXT),)
    message: str


FRAME_TYPES: dict[int, type[Frame]] = {
    cls.TYPE: cls
    for cls in (Hello, Challenge, Proof, Welcome, Write, WriteRuns, SetAttr, Create, MkNod, MkDir, Unlink, RmDir,
                Rename, Link, Symlink, SetXattr, RemoveXattr, Fsync, Purge, Remove, ListDir, Listing, Checksum, Digests,
                Generation, KeepXattrs, Durable, Ack, Nack, Ping, Pong, Close, Error, Punch, ListData, DataMap,
                Snapshot, RetireSnapshot, SnapshotChanges, Changes, ResyncBegin, KeepDivergent, Kept, Fetch, Fetched,
                Clone, Adopt, Adopted)
}
OPERATION_TYPES = tuple(cls for cls in FRAME_TYPES.values() if issubclass(cls, Operation))
