"""Finding fsrep mounts in /proc/self/mountinfo: the FUSE source field is
the primary store's absolute path."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.fsrep"


@dataclass(frozen=True, slots=True)
class Mount:
    mountpoint: str
    store: str


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def fsrep_mounts() -> list[Mount]:
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            if len(fields) >= 5 and len(tail) >= 2 and tail[0] == FSTYPE:
                mounts.append(Mount(_unescape(fields[4]), _unescape(tail[1])))
    return mounts


def find_mount(mountpoint: str) -> Mount | None:
    """The fsrep mount at *mountpoint* (resolved like the kernel would)."""
    target = os.path.abspath(mountpoint)
    try:
        target = str(Path(target).resolve())
    except OSError:
        pass
    for mount in reversed(fsrep_mounts()):
        if mount.mountpoint == target:
            return mount
    return None


def enclosing_mount(path: Path) -> Mount | None:
    """The fsrep mount that *path* (absolute, resolved) is on, if any: its
    mount point is *path* or one of its parents."""
    for mount in reversed(fsrep_mounts()):
        if path == Path(mount.mountpoint) or Path(mount.mountpoint) in path.parents:
            return mount
    return None


def is_dead(mountpoint: str) -> bool:
    """Whether *mountpoint* is a FUSE mount whose daemon is gone: the
    kernel answers ENOTCONN (killed, crashed, out of memory)."""
    try:
        os.stat(mountpoint)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def unmount(mountpoint: str, *, lazy: bool = False) -> None:
    """Unmount *mountpoint* with fusermount3; *lazy* detaches it at once,
    and processes with files open on it keep them until they close them.

    Raises:
        OSError: fusermount3 failed (``strerror`` is its last line of stderr).
    """
    done = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), mountpoint], capture_output=True,
                          text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise OSError(errno.EIO, lines[-1] if lines else f"fusermount3 exited {done.returncode}")
