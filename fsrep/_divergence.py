"""Split brain: what each side changed since the newest snapshot both hold,
so that the operator who must choose the side to give up sees what each
holds that the other does not — never a winner picked silently.

This side's count is what its snapshot chain recorded since the snapshot
(and its intercept log), summed delta by delta (an entry in two counts
twice); the secondary's is asked for (SnapshotChanges, a
question: nothing is applied) while the refused session stays connected.
Both are upper bounds, as every record of changes here is.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import tracking
import transport as tp

from ._from_snapshot import replica_changes
from ._status import Divergence

if TYPE_CHECKING:
    from ._splitter import Relationship

log = logging.getLogger(__name__)
UNKNOWN = -1


def this_side(rel: Relationship) -> Divergence:
    """What changed here since the newest common snapshot."""
    sid = rel.snapshots.basis()
    if sid is None:
        return Divergence("", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
    # An upper bound from the deltas as they are (as a snapshot's status counts them): no union made per status.
    chain = rel.snapshots.chain
    deltas = [*chain.deltas(sid.name), *filter(None, [chain.intercept(sid.name)])]
    return Divergence(sid.name, sum(len(d.files()) + d.dir_count for d in deltas),
                      sum(d.dirty_bytes for d in deltas), UNKNOWN, UNKNOWN)


def current(rel: Relationship) -> Divergence | None:
    """What ``fsrep status`` shows: this side's count as of now (clients
    write on), the secondary's as last asked."""
    known = rel.divergence
    if known is None:
        return None
    here = this_side(rel)
    if here.snapshot != known.snapshot:
        return here
    return dataclasses.replace(known, primary_files=here.primary_files, primary_bytes=here.primary_bytes)


async def other_side(rel: Relationship) -> None:
    """Ask the secondary what changed there since the snapshot, and say
    what diverged (the log, and ``fsrep status``)."""
    divergence = rel.divergence
    if divergence is None or not divergence.snapshot:
        log.info("group %s: split brain, and no snapshot both sides hold: what diverged cannot be told",
                    rel.record.id)
        return
    files = data = 0

    def count(path: bytes, flags: int, runs: list[tuple[int, int]]) -> None:
        nonlocal files, data
        files += 1
        data += sum(n for _, n in runs) * tracking.REGION_SIZE

    try:
        rel.stream.prepare()
        found = await replica_changes(rel.stream, divergence.snapshot, count)
    except tp.LinkDown:
        return  # asked again at the next handshake
    if not found:
        return
    rel.divergence = dataclasses.replace(divergence, secondary_files=files, secondary_bytes=data)
    log.info("group %s: split brain: since snapshot %s, %d entries (%d bytes of data) changed here and %d "
                "(%d bytes) on the secondary; nothing is resynced until an operator chooses the side to give up",
                rel.record.id, divergence.snapshot, divergence.primary_files, divergence.primary_bytes, files, data)
