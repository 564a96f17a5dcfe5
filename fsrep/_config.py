"""What a primary store remembers about its consistency groups, the
pre-shared key and the TLS files. All are read once at start and fail with
a one-line, actionable message when wrong."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import ssl
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tracking
import transport as tp

log = logging.getLogger(__name__)
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
    _utf8(text, what)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} must be HOST:PORT (for example 127.0.0.1:7700), not {text!r}")
    return host, int(port)


def _utf8(text: str, what: str) -> None:
    """Command-line text is kept in state files and sent to peers as UTF-8;
    bytes that are not (surrogate-escaped in argv) are refused here, by name.

    Raises:
        ConfigError: *text* holds bytes that are not UTF-8.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what}: {os.fsencode(text)!r} is not UTF-8 text; give it in UTF-8 (fsrep "
                          f"keeps it in UTF-8 state files)") from None


@dataclass(frozen=True, slots=True)
class GroupSpec:
    """A consistency group the operator declares: a subtree of the mount
    (``""`` is the default group, the rest of the mount) and its policy and
    secondary."""

    path: str
    policy: str
    secondary: str


_TOP_KEYS = {"secondary", "policy", "group", "tls"}
_GROUP_KEYS = {"path", "policy", "secondary"}
_TLS_KEYS = ("cert", "key", "ca")  # the [tls] table; the flags are --tls-cert, --tls-key, --tls-ca


def check_group_path(text: str, *, what: str) -> str:
    """A group's subtree, normalised (``vms/vm1``).

    Raises:
        ConfigError: empty, with ``.`` or ``..`` parts, or inside ``.fsrep``
            (a leading ``/`` means the mount's root and is dropped).
    """
    _utf8(text, what)
    stripped = text.strip("/")
    parts = stripped.split("/")
    if not stripped or any(part in ("", ".", "..") for part in parts) or parts[0] == META_DIR or "\0" in text:
        raise ConfigError(f"{what}: a group path must name a subdirectory of the mount (like vms/vm1: "
                          f"no '.', '..' or empty parts, not inside {META_DIR}), not {text!r}")
    return stripped


def declared_groups(config: str | None, flags: list[str], policy: str | None,
                    secondary: str | None) -> list[GroupSpec]:
    """Every consistency group of a mount, the default group first: those
    of the TOML file *config* and of ``--group`` *flags*. The mount's
    *policy* and *secondary* (command-line flags, which win over the file's
    top-level settings) apply where a group names none.

    Raises:
        ConfigError: the file is unreadable, not TOML, has unknown keys,
            or declares groups that overlap (one path inside another).
    """
    table = _read_config(config)
    where = f"config file {config}" if config else "--group"
    policy = _policy(policy or table.get("policy", "sync"), where)
    if secondary is not None:
        parse_address(secondary, what="--secondary")
    elif "secondary" in table:
        secondary = _string(table["secondary"], where, "secondary")
        parse_address(secondary, what=f"{where}: secondary")
    else:
        raise ConfigError("no secondary: give --secondary HOST:PORT or 'secondary' in the config file")
    entries = table.get("group", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{where}: 'group' must be an array of tables ([[group]] sections)")
    specs = [GroupSpec("", policy, secondary)]
    for entry in entries:
        unknown = set(entry) - _GROUP_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown group setting {sorted(unknown)[0]!r} "
                              f"(known: {', '.join(sorted(_GROUP_KEYS))})")
        if "path" not in entry:
            raise ConfigError(f"{where}: every [[group]] needs a path (a subdirectory of the mount)")
        group_secondary = _string(entry.get("secondary", secondary), where, "secondary")
        parse_address(group_secondary, what=f"{where}: secondary of group {entry['path']!r}")
        specs.append(GroupSpec(check_group_path(_string(entry["path"], where, "path"), what=where),
                               _policy(entry.get("policy", policy), where), group_secondary))
    specs += [GroupSpec(check_group_path(flag, what="--group"), policy, secondary) for flag in flags]
    paths = [spec.path for spec in specs[1:]]
    for path in paths:
        if paths.count(path) > 1:
            raise ConfigError(f"group {path!r} is declared twice")
        for other in paths:
            if other.startswith(path + "/"):
                raise ConfigError(f"groups {path!r} and {other!r} overlap: one group cannot hold another")
    return specs


def _read_config(config: str | None) -> dict:
    """The TOML file's top-level table (empty without a file).

    Raises:
        ConfigError: unreadable, not TOML, or with unknown settings.
    """
    if config is None:
        return {}
    try:
        with open(config, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {config} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                          f"offset {exc.start}); a TOML file must be UTF-8") from None
    unknown = set(table) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"config file {config}: unknown setting {sorted(unknown)[0]!r} "
                          f"(known: {', '.join(sorted(_TOP_KEYS))})")
    return table


def declared_tls(config: str | None, cert: str | None, key: str | None, ca: str | None) -> tp.TLSFiles | None:
    """The TLS files of a daemon: the flags ``--tls-cert``, ``--tls-key``
    and ``--tls-ca`` (*cert*, *key*, *ca*) when any is given, else the
    ``[tls]`` table of the TOML file *config* (paths relative to the file);
    None: no TLS. Mutual TLS needs all three.

    Raises:
        ConfigError: one or two of the three are given, or the table is
            malformed.
    """
    flags = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if any(flags.values()):
        missing = [flag for flag, value in flags.items() if not value]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} missing: mutual TLS needs --tls-cert, --tls-key and "
                              f"--tls-ca together (this host's certificate, its key, and the CA of the peers)")
        return tp.TLSFiles(cert=str(cert), key=str(key), ca=str(ca))
    table = _read_config(config).get("tls")
    if table is None:
        return None
    where = f"config file {config}: [tls]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table with {', '.join(_TLS_KEYS)}")
    unknown = set(table) - set(_TLS_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r} (known: {', '.join(_TLS_KEYS)})")
    missing = [name for name in _TLS_KEYS if name not in table]
    if missing:
        raise ConfigError(f"{where}: {' and '.join(missing)} missing; mutual TLS needs cert, key and ca together")
    base = Path(str(config)).parent
    paths = [str(base / _string(table[name], where, name)) for name in _TLS_KEYS]
    return tp.TLSFiles(cert=paths[0], key=paths[1], ca=paths[2])


def tls_context(files: tp.TLSFiles | None, *, server: bool) -> ssl.SSLContext | None:
    """The SSL context of *files* (the secondary's when *server*, else the
    primary's); None without TLS.

    Raises:
        ConfigError: a file is unreadable or unusable (names it).
    """
    if files is None:
        return None
    try:
        return tp.server_context(files) if server else tp.client_context(files)
    except tp.TLSFileError as exc:
        raise ConfigError(str(exc)) from None


def _string(value: object, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
    return value


def _policy(value: object, where: str) -> str:
    if value not in POLICIES:
        raise ConfigError(f"{where}: unknown policy {value!r} (use one of {', '.join(POLICIES)})")
    return str(value)


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
    promoted_from: str = ""  # hex: promoted from a replica that held the old primary's generation this
    store: str = ""  # where the group's data lives when moved out of the mount's store (fsrep-move)
    moving_to: str = ""  # a move under way: the destination, saved before its rename (``_move``)
    moving_ino: int = 0  # ... and the inode of the group's directory, found there once it is renamed
    moving_phase: str = ""  # a move across file systems: "copy", "cutover" or "cleanup" (``_move_across``)
    moving_from: str = ""  # ... and where the group's data was before it
    moved_to: str = ""  # HOST:PORT of the primary the group moved to (--to-primary): here it is read-only
    move_unconfirmed: bool = False  # ... that primary did not say it took the group (the link failed first)
    arrived_from: str = ""  # the primary the group moved here from (``_arrivals``): declared by its record

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


RESERVE_SIZE = 256 * 1024  # disk kept for fsrep's own state on a full store


class Reserve:
    """Disk held for fsrep's own state on a store: a full disk must not keep
    fsrep from writing what lets it go on (on a primary the stale mark and
    the activity log, on a secondary the undo log of a resync that would
    free space). ``STORE/.fsrep/reserve`` holds RESERVE_SIZE bytes, given
    up the first time such a write finds no space, and taken again by
    ``hold()`` once there is room."""

    def __init__(self, store: str | os.PathLike[str]) -> None:
        self.path = Path(store, META_DIR, "reserve")

    def hold(self) -> None:
        """Hold RESERVE_SIZE bytes of the store's disk, if there is room."""
        try:
            if self.path.stat().st_size >= RESERVE_SIZE:
                return
        except FileNotFoundError:
            pass
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_SIZE)
            finally:
                os.close(fd)
        except OSError:
            self.path.unlink(missing_ok=True)  # no room yet: try again later

    def durably(self, write: Callable[[], object]) -> None:
        """Run *write* (a state file's save); when the disk is full, give up
        the reserve and try once more.

        Raises:
            OSError: it still failed.
        """
        try:
            write()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.path.exists():
                raise
            self.path.unlink(missing_ok=True)
            log.warning("the store's disk is full: fsrep gave up its %d KiB reserve to save its state",
                        RESERVE_SIZE // 1024)
            write()


class GroupStore:
    """The ``.fsrep/groups/`` directory of a primary store (its state files
    written through the store's ``Reserve``)."""

    def __init__(self, store: str) -> None:
        self.dir = Path(store, META_DIR, "groups")
        self.space = Reserve(store)

    def reserve(self) -> None:
        self.space.hold()

    def durably(self, write: Callable[[], None]) -> None:
        self.space.durably(write)

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
        payload = dirty.to_payload()
        self.durably(lambda: tracking.save_state(self.dirty_file(record), tracking.DIRTY_KIND, payload))

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

    def remove(self, record: GroupRecord) -> None:
        """Forget a group: its record, dirty set and activity log."""
        for path in self.dir.glob(f"{record.id}.*"):
            path.unlink(missing_ok=True)

    def save(self, record: GroupRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        payload = asdict(record)
        self.durably(lambda: tracking.save_state(self.file(record), GROUP_KIND, payload))
