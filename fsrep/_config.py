"""What a primary store remembers about its consistency groups, and the
pre-shared key. Both are read once at start and fail with a one-line,
actionable message when wrong."""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tracking

KEY_BYTES = 32
META_DIR = ".fsrep"
GROUP_KIND = "fsrep-group"
POLICIES = ("sync", "strict", "semi-sync", "async")


class ConfigError(Exception):
    """Raised when an operator-supplied file or argument is unusable; the
    message is one line that names the problem and what to do."""


def write_key(path: str) -> None:
    """Write a new random pre-shared key, readable by the owner only.

    Raises:
        ConfigError: the file exists (never overwrite a key) or cannot be made.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists already; remove it first or choose another file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_key(path: str) -> bytes:
    """Read a key written by ``fsrep keygen``.

    Raises:
        ConfigError: missing, unreadable or not a key.
    """
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist; create one with 'fsrep keygen {path}'") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read key file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < KEY_BYTES:
        raise ConfigError(f"{path} is not an fsrep key (expected {2 * KEY_BYTES} hex characters); "
                          f"create one with 'fsrep keygen'")
    return key


def parse_address(text: str, *, what: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too).

    Raises:
        ConfigError: not of that form or the port is out of range.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT (for example 127.0.0.1:7700), not {text!r}")
    return host, int(port)


@dataclass(slots=True)
class GroupRecord:
    """The durable facts of one consistency group on the primary.

    ``stale`` is the durable statement "the replica may lack changes made
    here"; it is written *before* any change is applied locally without being
    replicated, and only a completed resync clears it.
    """

    id: str
    path: str
    policy: str
    secondary: str
    last_seq: int = 0
    stale: bool = False
    stale_reason: str = ""
    clean_shutdown: bool = True
    generations: list[str] = field(default_factory=list)  # hex ids, oldest first

    @property
    def group_id(self) -> bytes:
        return uuid.UUID(self.id).bytes

    @property
    def generation_ids(self) -> list[bytes]:
        return [bytes.fromhex(g) for g in self.generations]

    def new_generation(self) -> bytes:
        """Start a new generation (the caller saves the record)."""
        generation = tracking.generations.new_generation()
        self.generations = [g.hex() for g in tracking.generations.extend(self.generation_ids, generation)]
        return generation


class GroupStore:
    """The ``.fsrep/groups/`` directory of a primary store."""

    def __init__(self, store: str) -> None:
        self.dir = Path(store, META_DIR, "groups")

    def file(self, record: GroupRecord) -> Path:
        return self.dir / f"{record.id}.json"

    def load_all(self) -> list[GroupRecord]:
        """Every group of the store.

        Raises:
            ConfigError: a group file is corrupt (names the file and the fix).
        """
        records = []
        if not self.dir.is_dir():
            return records
        for path in sorted(self.dir.glob("*.json")):
            try:
                payload = tracking.load_state(path, GROUP_KIND)
                record = GroupRecord(**payload)
                record.generation_ids  # noqa: B018 - hex ids, or ValueError below
                records.append(record)
            except tracking.StateError as exc:
                raise ConfigError(f"{exc}; fsrep will not guess the replica's state — restore the file "
                                  f"or remove it to start a new relationship (full baseline)") from None
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: fields do not match this fsrep version; restore the file or "
                                  f"remove it to start a new relationship") from None
        return records

    def dirty_file(self, record: GroupRecord) -> Path:
        return self.dir / f"{record.id}.dirty"

    def save_dirty(self, record: GroupRecord, dirty: tracking.DirtySet) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tracking.save_state(self.dirty_file(record), tracking.DIRTY_KIND, dirty.to_payload())

    def load_dirty(self, record: GroupRecord) -> tracking.DirtySet:
        """The group's dirty set; when it is missing or damaged, one that
        says "everything" — never an empty, clean set."""
        try:
            return tracking.DirtySet.from_payload(tracking.load_state(self.dirty_file(record),
                                                                      tracking.DIRTY_KIND))
        except (tracking.StateError, ValueError) as exc:
            dirty = tracking.DirtySet()
            dirty.mark_everything(f"dirty set unusable ({exc})")
            return dirty

    def activity(self, record: GroupRecord) -> tracking.AlternatingState:
        """Where the group's activity log lives (two files, saved in turn)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return tracking.AlternatingState(self.dir / f"{record.id}.activity", tracking.ACTIVITY_KIND)

    def save(self, record: GroupRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tracking.save_state(self.file(record), GROUP_KIND, asdict(record))
