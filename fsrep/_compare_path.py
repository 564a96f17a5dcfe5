"""``fsrep-resync MOUNTPOINT --path PATH``: one file or directory compared
with the replica now, whatever tracking says.

What it is for: an outside agent changed PATH where the mount could not
see it — a hypervisor's hook cloned a disk image in the store itself
(``cp --reflink``), a restore from backup wrote into the store — and
tells fsrep so right after. Tracking knows nothing of that change, so the
path is marked as "not known to match": its directories (and the one
holding PATH) for a comparison of their entries, each regular file wholly
dirty and queued for a settling comparison by digest
(``ResyncStream.to_compare``). The quick resync that follows then sends
only what differs: a region equal on both sides is cleaned when its
digests match, a file the replica lacks is created and copied whole.

The marks are made in steps of ENTRIES_PER_STEP entries, clients writing
on: the group leaves InSync first, so a client's change meanwhile stays
local and is marked as any change made while OutOfSync.

Caveats:
- The entries of the directory holding PATH are compared too (a new or
  removed PATH needs that): a sibling changed outside the mount is brought
  over with it.
- The files queued for comparison are kept in memory: should the daemon
  restart before the resync, they are copied whole instead of compared.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

import tracking

if TYPE_CHECKING:
    from ._stream import ResyncStream
    from ._tree import Tree

log = logging.getLogger(__name__)
ENTRIES_PER_STEP = 512  # entries marked between letting clients in


@dataclass(frozen=True, slots=True)
class Named:
    """What a --path comparison covers."""

    files: int
    bytes: int
    directories: int


def whole_marks(entries: Iterable[tuple[bytes, os.stat_result]]) -> tracking.Marks:
    """Marks that make *entries* (path, lstat) wholly "not known to match":
    a directory for a comparison of its entries, anything else for its
    metadata, a regular file for all its data too."""
    dirs, meta, regions = [], [], []
    for path, st in entries:
        if stat.S_ISDIR(st.st_mode):
            dirs.append((st.st_ino, path))
            continue
        meta.append((st.st_ino, path))
        if stat.S_ISREG(st.st_mode) and st.st_size:
            regions.append((st.st_ino, path, 0, st.st_size))
    return tracking.Marks(regions=tuple(regions), meta=tuple(meta), dirs=tuple(dirs))


async def name_for_comparison(stream: ResyncStream, tree: Tree, path: bytes) -> Named:
    """Mark *path* (relative to the group) and everything below it for a
    comparison with the replica, and queue its regular files for a settling
    comparison by digest. A *path* that is gone here marks its directory
    only: the replica's entry is removed.

    Raises:
        FileNotFoundError: neither *path* nor its directory exists.
    """
    parent = path.rpartition(b"/")[0]
    try:
        top = tree.lstat(path)
    except FileNotFoundError:
        top = None
    above = [] if not path else [(parent, tree.lstat(parent))]  # the entry itself may be new, or gone, there
    reason = f"fsrep-resync --path /{os.fsdecode(path)}: compared with the replica"
    stream.leave_sync(reason)
    stream.dirty.apply(whole_marks(above))
    named = Named(0, 0, len(above))
    batch: list[tuple[bytes, os.stat_result]] = [] if top is None else [(path, top)]
    entries = iter(tree.walk(path)) if top is not None and stat.S_ISDIR(top.st_mode) else iter(())
    while batch:
        named = _mark(stream, batch, named)
        await trio.lowlevel.checkpoint()
        batch = [entry for _, entry in zip(range(ENTRIES_PER_STEP), entries, strict=False)]
    stream.save_dirty()
    log.info("group %s: /%s is compared with the replica: %d files (%d bytes) by digest, %d directories by their "
             "entries", stream.record.id, os.fsdecode(path), named.files, named.bytes, named.directories)
    return named


def _mark(stream: ResyncStream, batch: list[tuple[bytes, os.stat_result]], named: Named) -> Named:
    """One step: mark *batch* and queue its regular files for comparison."""
    stream.dirty.apply(whole_marks(batch))
    files = size = dirs = 0
    for entry, st in batch:
        if stat.S_ISREG(st.st_mode):
            stream.to_compare[st.st_ino] = entry
            files += 1
            size += st.st_size
        dirs += stat.S_ISDIR(st.st_mode)
    return Named(named.files + files, named.bytes + size, named.directories + dirs)
