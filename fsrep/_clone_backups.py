"""Clone backups (``fsrep mount ... --clone-backup DIR``): what a file
cloned while its group was not InSync held, kept so the resync can replay
the clone from it even if the source changed meanwhile.

Why: a clone made while out of sync is recorded, and the resync replays it
as a clone of the replica's copy of the source, then compares the copy by
digest (``_resync``). That copy is what the source was at the last sync —
until the resync's directory phase removes or replaces it there, and
several clones of a source written meanwhile each send what it gained.
With a backup directory each such clone is also kept in DIR/<group id>/
as a reflink, named for the source's content (its inode and ctime, so
clones of an unchanged source share one). The resync first stages each
backup on the replica — cloned from the replica's copy of the source while
that is still as the last sync left it, into a staging directory outside
the replica's tree (the secondary's ``.fsrep/clones/<group id>``), then
compared by digest and what differs sent — and only then replays the
clones, each as a clone of its staged backup, each copy compared by digest
as before. So what the source gained crosses once however many clones
there are, and a source removed or replaced meanwhile costs nothing.

Both sides name a staged backup ``STAGING/<name>`` (``Tree.stage_in``).
The replica empties its staging directory at every ResyncBegin, and the
resync removes what it staged once the clones are replayed; here a backup
goes once no clone record names it.

Caveats:
- DIR must be on the store's file system: a reflink needs it, and the
  resync tracks a staged backup by its inode number among the group's.
- Without reflinks a backup is a full copy, made while the mount waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ._config import ConfigError
from ._sparse import clone_data
from ._tree import Tree

log = logging.getLogger(__name__)
PARTIAL = ".partial"  # a backup being made: never named by a record


class CloneBackups:
    """The clone backups of one group: the files of its directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(mode=0o700, exist_ok=True)

    def keep(self, tree: Tree, path: bytes, st: os.stat_result) -> str:
        """Keep what regular file *path* (lstat *st*), the source of a clone
        just made, holds; the backup's name (one kept already for the same content is
        reused), or "" when it could not be made — the clone is then
        replayed from its source, as without a backup directory."""
        try:
            return self._keep(tree, path, st)
        except OSError as exc:
            log.warning("cannot keep a clone backup of %r in %s: %s; the resync replays the clone from its source",
                        os.fsdecode(path), self.dir, exc)
            return ""

    def _keep(self, tree: Tree, path: bytes, st: os.stat_result) -> str:
        name = f"{st.st_ino}.{st.st_ctime_ns}"
        target = self.dir / name
        if target.exists():
            return name
        partial = self.dir / (name + PARTIAL)
        src = tree.open_regular(path, os.O_RDONLY)
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                clone_data(src, fd)
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        finally:
            os.close(src)
        os.rename(partial, target)
        return name

    def prune(self, named: Iterable[str]) -> int:
        """Remove the backups no clone record names; how many went."""
        keep = set(named)
        removed = 0
        for entry in self.dir.iterdir():
            if entry.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
        return removed


def empty(directory: Path) -> None:
    """Remove every staged backup of *directory* (a replica's), if any."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def check_backup_dir(directory: str, store: Path, mountpoint: Path) -> Path:
    """*directory* as ``--clone-backup`` may name it.

    Raises:
        ConfigError: it is not a directory, not on the store's file system,
            inside the mount, or inside the store where a group would
            replicate it.
    """
    path = Path(directory).resolve()
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"--clone-backup {directory}: {exc.strerror or exc}; make the directory first") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"--clone-backup {directory} is not a directory")
    if st.st_dev != store.stat().st_dev:
        raise ConfigError(f"--clone-backup {directory} is on another file system than the store {store}: backups "
                          f"are reflinks, so give a directory on the store's file system")
    inside = path == mountpoint or mountpoint in path.parents
    in_store = path == store or store in path.parents
    if inside or (in_store and store / ".fsrep" not in [path, *path.parents]):
        where = "inside the mount" if inside else "inside the store, where a group would replicate it"
        raise ConfigError(f"--clone-backup {directory} is {where}; give a directory outside both (or under "
                          f"{store / '.fsrep'})")
    return path
