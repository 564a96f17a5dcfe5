"""Opening a store (primary or replica root): its ``.fsrep/`` directory and
the lock that keeps a second daemon off it.

``.fsrep`` is hidden from the mount and never replicated, so making it
must not show in the store root's mtime either: the root's mtime is put
back, and stays the clients' (what the replica's root mirrors). Changes
inside ``.fsrep`` do not touch the root's mtime."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from ._config import META_DIR, ConfigError
from ._mounts import enclosing_mount


def check_directory(path: str, what: str) -> Path:
    """The absolute path of an existing directory, or a ConfigError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; create it first") from None
    except OSError as exc:
        raise ConfigError(f"cannot reach {what} {path}: {exc.strerror}{_dead_mount_hint(path, exc)}") from None
    if not stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {path} is not a directory")
    return Path(path).resolve()


def _dead_mount_hint(path: str, exc: OSError) -> str:
    if exc.errno != errno.ENOTCONN:
        return ""
    mount = enclosing_mount(Path(os.path.abspath(path)))
    if mount is None:
        return " (it is on a FUSE mount whose daemon is gone: unmount that with 'fusermount3 -u -z')"
    return f" (the daemon of the fsrep mount {mount.mountpoint} is gone: run 'fsrep umount {mount.mountpoint}')"


class StoreLock:
    """An exclusive lock on ``STORE/.fsrep/lock`` for the daemon's life."""

    def __init__(self, store: Path, role: str) -> None:
        self.meta = store / META_DIR
        if not self.meta.is_dir():
            before = os.stat(store).st_mtime_ns
            self.meta.mkdir(mode=0o700, exist_ok=True)
            os.utime(store, ns=(os.stat(store).st_atime_ns, before))
        self._fd = os.open(self.meta / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 64, 0).decode(errors="replace").strip()
            os.close(self._fd)
            raise ConfigError(f"{store} is in use by another fsrep daemon ({owner}); "
                              f"stop it first ('fsrep umount' or kill it)") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{role} pid {os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)
