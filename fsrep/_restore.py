"""``fsrep-resync MOUNTPOINT --path PATH --from secondary``: one file made
here as the replica holds it, for when this side's copy is lost or
damaged (a disk error, an outside agent's mistake, a move whose old place
is gone).

How this works: a resync run does it before it begins, asking the replica
with early questions. This side's version, if any, is copied first to
``STORE/.fsrep/divergent/<group>/<time>/PATH`` (as a split brain's side
given up is), so nothing is lost without a copy. The group leaves InSync,
then the file is made through the mount by the pull's ``Puller`` (the
kernel's caches and open files stay right, as for any client's change):
those writes stay local and dirty. Last, the path is named for a
comparison by digest (``_compare_path``), which finds it equal — the data
crosses the link once — and the run goes on as a quick resync.

Caveats:
- A file, a symlink or a special file: not a directory on either side.
- A client writing the file meanwhile is ordered with the restore's writes
  as two clients' would be.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import trio

import tracking

from ._compare_path import name_for_comparison
from ._divergent_copy import keep
from ._progress import ResyncRun, RunRefused
from ._pull import Puller
from ._stream import ResyncStream
from ._tree import Tree

log = logging.getLogger(__name__)


class RestoreRefused(RunRefused):
    """The file cannot be restored; the run ends with the reason."""


async def restore(stream: ResyncStream, tree: Tree, run: ResyncRun) -> None:
    """Make *run.restore* here as the replica holds it, then queue it for a
    comparison by digest.

    Raises:
        LinkDown: the link failed (the run restores it again when back);
        RestoreRefused: it cannot be restored.
    """
    path, shown = run.restore, "/" + os.fsdecode(run.restore)
    puller = Puller(stream, Path(run.restore_into))
    theirs = await puller.fetch(path)
    if not theirs.found:
        raise RestoreRefused(f"the secondary holds no {shown}; nothing was changed")
    here = _lstat(tree, path)
    if stat.S_ISDIR(theirs.mode) or (here is not None and stat.S_ISDIR(here.st_mode)):
        raise RestoreRefused(f"{shown} is a directory {'there' if stat.S_ISDIR(theirs.mode) else 'here'}: --from "
                             f"secondary restores one file; nothing was changed")
    stream.leave_sync(f"{shown} is restored from the secondary")
    if here is not None and not run.kept:
        changes = tracking.PathChanges()
        changes.mark(path, tracking.WHOLE)
        into = _unused(stream.divergent_dir())
        await trio.to_thread.run_sync(keep, tree, changes, into)
        run.kept, run.kept_side = str(into), "primary"
        log.info("group %s: %s is restored from the secondary; this side's copy is kept in %s", stream.record.id,
                 shown, into)
    try:
        await puller.path(tracking.PathChange(path, tracking.WHOLE))
        await puller.finish()
    except OSError as exc:  # through the mount: what a client would get (a full disk, no such directory)
        raise RestoreRefused(f"cannot restore {shown} here: {exc}") from None
    run.restored = True
    log.info("group %s: %s restored from the secondary (%d bytes); compared by digest next", stream.record.id,
             shown, puller.bytes)
    await name_for_comparison(stream, tree, path)


def _lstat(tree: Tree, path: bytes) -> os.stat_result | None:
    try:
        return tree.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _unused(into: Path) -> Path:
    """*into*, or with a suffix when a copy of the same second took it."""
    for n in range(1, 1000):
        candidate = into if n == 1 else into.with_name(f"{into.name}-{n}")
        if not candidate.exists():
            return candidate
    raise RestoreRefused(f"{into}: too many copies kept in one second; try again")
