"""The one way fsrep writes durable state: temp file, fsync, rename, fsync
directory. State files are JSON carrying a format name, a version and an
xxh3 checksum, so a missing or damaged file is an error with a name — never
an empty, "clean" state."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

STATE_VERSION = 1


class StateError(Exception):
    """Base of the errors loading durable state."""


class StateMissing(StateError):
    """Raised when a state file that should exist does not."""


class StateCorrupt(StateError):
    """Raised when a state file is unreadable, of another format or version,
    or fails its checksum."""


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace *path* with *data* so that a crash leaves the old or the new
    contents, never a mix.

    Durability: the data, then the rename, are on disk when this returns.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    _write_file(tmp, data, os.fsync)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def _write_file(path: Path, data: bytes, flush: Callable[[int], None]) -> None:
    """Create or truncate *path*, write *data* whole, *flush* the descriptor."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        flush(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in directory *path* durable."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _checksum(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return xxhash.xxh3_64_hexdigest(canonical)


def save_state(path: str | os.PathLike[str], kind: str, payload: dict[str, Any]) -> None:
    """Durably write *payload* as a state file of format *kind*."""
    doc = {"format": kind, "version": STATE_VERSION, "checksum": _checksum(payload), "payload": payload}
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")


def load_state(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Read a state file written by save_state.

    Raises:
        StateMissing: there is no such file.
        StateCorrupt: anything else is wrong with it; the message says what.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise StateMissing(f"{path}: missing") from None
    except OSError as exc:
        raise StateCorrupt(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StateCorrupt(f"{path}: not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != kind:
        raise StateCorrupt(f"{path}: not a {kind} state file")
    if doc.get("version") != STATE_VERSION:
        raise StateCorrupt(f"{path}: version {doc.get('version')!r}, this fsrep reads {STATE_VERSION}")
    payload = doc.get("payload")
    if not isinstance(payload, dict) or doc.get("checksum") != _checksum(payload):
        raise StateCorrupt(f"{path}: checksum mismatch")
    return payload


class AlternatingState:
    """A state file written often and cheaply: two files used in turn,
    rewritten in place with one fdatasync each, every save carrying a
    generation. A crash in the middle of a save damages only the file being
    written; the other holds the previous generation, which is what the
    caller relied on until this save returned.

    For the activity log, which is saved before the first write into every
    newly active extent.
    """

    def __init__(self, base: str | os.PathLike[str], kind: str) -> None:
        base = Path(base)
        self.paths = (base.with_name(base.name + ".0"), base.with_name(base.name + ".1"))
        self.kind = kind
        self.generation = 0
        try:
            self.load()  # continue after the newest generation on disk
        except StateError:
            pass

    def save(self, payload: dict[str, Any]) -> None:
        self.generation += 1
        path = self.paths[self.generation % 2]
        body = {"generation": self.generation, "state": payload}
        doc = {"format": self.kind, "version": STATE_VERSION, "checksum": _checksum(body), "payload": body}
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        created = not path.exists()
        _write_file(path, data, os.fdatasync)
        if created:
            fsync_directory(path.parent)

    def load(self) -> dict[str, Any]:
        """The newest intact generation.

        Raises:
            StateMissing: neither file exists.
            StateCorrupt: neither file is intact.
        """
        found: list[tuple[int, dict[str, Any]]] = []
        errors = []
        for path in self.paths:
            try:
                body = load_state(path, self.kind)
                found.append((int(body["generation"]), dict(body["state"])))
            except StateMissing:
                continue
            except (StateCorrupt, KeyError, TypeError, ValueError) as exc:
                errors.append(str(exc))
        if not found:
            if errors:
                raise StateCorrupt("; ".join(errors))
            raise StateMissing(f"{self.paths[0]}: missing")
        self.generation, payload = max(found, key=lambda item: item[0])
        return payload


REWRITE_AFTER = 1024 * 1024  # journal bytes below which a journaled state is not written whole again


class JournaledState:
    """A large state file kept current cheaply: a base written whole now
    and then (``rewrite``), and a journal of what changed since, appended
    with one fdatasync each (``append``) — so a save costs what changed
    since the last one, not the size of the state.

    Each base carries a new *epoch*; journal records carry the epoch of the
    base they follow. Loading returns the base and its records in order:
    records of another epoch (a crash after a rewrite, before the old
    journal was emptied) are skipped, and a torn last record (a crash in
    the middle of an append, which the caller never relied on) ends the
    journal and is cut off before the next append.

    For the pseudo snapshots' records of what changed since each.
    """

    def __init__(self, base: str | os.PathLike[str], kind: str) -> None:
        self.path = Path(base)
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.kind = kind
        self.epoch = ""
        self.base_bytes = 0
        self.journal_bytes = 0

    def rewrite(self, payload: dict[str, Any]) -> None:
        """Replace the base with *payload*; the journal starts empty.

        Durability: on disk when this returns.
        """
        epoch = uuid.uuid4().hex
        body = {"epoch": epoch, "state": payload}
        data = json.dumps({"format": self.kind, "version": STATE_VERSION, "checksum": _checksum(body),
                           "payload": body}, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        atomic_write(self.path, data)
        self.epoch, self.base_bytes = epoch, len(data)
        _write_file(self.journal, b"", os.fdatasync)  # what it held is in the base now
        self.journal_bytes = 0

    @property
    def outgrown(self) -> bool:
        """The journal is larger than the base (or than REWRITE_AFTER): time
        to write the state whole again."""
        return self.journal_bytes > max(REWRITE_AFTER, self.base_bytes)

    def append(self, record: dict[str, Any], *, durable: bool = True) -> None:
        """Add *record* after the base and the records before it. After an
        append fails, ``rewrite`` before appending again: a record after a
        half-written one would be read as part of it.

        Durability: on disk when this returns — or, with *durable* False,
        once ``sync`` has returned (several records, one fdatasync).
        """
        if not self.epoch:
            raise StateError(f"{self.path}: no base to append to (rewrite first)")
        body = {"epoch": self.epoch, "record": record}
        line = json.dumps({"checksum": _checksum(body), **body}, sort_keys=True, separators=(",", ":")).encode()
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(line + b"\n")
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        self.journal_bytes += len(line) + 1

    def sync(self) -> None:
        """Make every record appended so far durable."""
        fd = os.open(self.journal, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def load(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The base and the intact records that follow it, in order.

        Raises:
            StateMissing: there is no base.
            StateCorrupt: the base is damaged (a damaged record only ends
                the journal).
        """
        body = load_state(self.path, self.kind)
        if not isinstance(body.get("epoch"), str) or not isinstance(body.get("state"), dict):
            raise StateCorrupt(f"{self.path}: not a {self.kind} base")
        self.epoch, self.base_bytes = body["epoch"], self.path.stat().st_size
        try:
            raw = self.journal.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise StateCorrupt(f"{self.journal}: cannot read: {exc.strerror}") from None
        records, good = [], 0
        lines = raw.splitlines(keepends=True)
        for index, line in enumerate(lines):
            record = self._record(line)
            if record is None:
                if index < len(lines) - 1:  # not a torn last append: records the caller relied on are damaged
                    raise StateCorrupt(f"{self.journal}: record {index + 1} is damaged")
                break
            good += len(line)
            if record[0] == self.epoch:
                records.append(record[1])
        if good < len(raw):
            os.truncate(self.journal, good)  # a torn append: what follows must be readable
        self.journal_bytes = good
        return body["state"], records

    def _record(self, line: bytes) -> tuple[str, dict[str, Any]] | None:
        """(epoch, record) of one intact journal line; None if it is not one."""
        if not line.endswith(b"\n"):
            return None
        try:
            doc = json.loads(line)
            body = {"epoch": doc["epoch"], "record": doc["record"]}
        except (ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError):
            return None
        if doc.get("checksum") != _checksum(body) or not isinstance(body["record"], dict):
            return None
        return str(body["epoch"]), body["record"]

    def remove(self) -> None:
        for path in (self.path, self.journal):
            path.unlink(missing_ok=True)
