"""The lines of prose about a consistency group that a table of numbers
cannot carry: the resync or move under way, why the group is not in sync,
what failed. ``fsrep status`` prints them under its table and ``fsrep top``
under its live one, so both say the same thing the same way."""

from __future__ import annotations

import time

from ._status import GroupStatus, ResyncProgress


def notes(group: GroupStatus) -> list[str]:
    """What the table does not show of a group: the resync under way, and
    why the group is not in sync."""
    lines = []
    run = group.resync
    if run is not None and run.running:
        eta = "-" if run.eta_seconds is None else f"{run.eta_seconds:.0f}s"
        basis = f" from snapshot {run.snapshot}" if run.snapshot else ""
        lines.append(f"{run.mode} resync{basis} {run.percent:.1f}%: {_directories(run)}{run.bytes_remaining} "
                     f"bytes left at {run.bytes_per_second} bytes/s, ETA {eta}")
    if group.stale_reason:
        lines.append(f"replica needs a resync: {group.stale_reason}")
    if group.data_dir:
        lines.append(f"data in {group.data_dir} (moved there by fsrep-move)")
    if group.moved_to:
        lines.append(f"moved to the primary at {group.moved_to} (fsrep-move --to-primary): read-only here"
                     + ("; that primary never confirmed it took the group (the link failed first): see its "
                        "'fsrep status'" if group.move_unconfirmed else ""))
    move = group.move
    if move is not None and not move.finished:
        eta = "-" if move.eta_seconds is None else f"{move.eta_seconds:.0f}s"
        lines.append(f"moving to {move.destination}: {move.phase}, {move.bytes_copied} of {move.bytes_total} bytes "
                     f"copied at {move.bytes_per_second} bytes/s, ETA {eta}")
    elif move is not None and move.outcome != "done":
        lines.append(f"the last move, to {move.destination}, {move.outcome}")
    d = group.divergence
    if d is not None:
        there = (f"{d.secondary_files} entries ({d.secondary_bytes} bytes of data) on the secondary"
                 if d.secondary_files >= 0 else "the secondary's side not known yet")
        lines.append(f"split brain: since snapshot {d.snapshot}, {d.primary_files} entries ({d.primary_bytes} bytes "
                     f"of data) changed here, {there}" if d.snapshot else
                     "split brain: no snapshot both sides hold, so what diverged cannot be told")
    if group.snapshot is not None:
        s = group.snapshot
        taken = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s.created))
        lines.append(f"newest common snapshot: {s.name} (taken {taken}, at seq {s.seq} of generation "
                     f"{s.generation[:8]})")
    if group.last_error:
        lines.append(f"last error: {group.last_error}")
    lines.extend(f"failing: {fault}" for fault in group.faults)
    if group.internal_errors:
        lines.append(f"{group.internal_errors} requests failed with an internal error (EIO; see the log); the tree "
                     f"is compared by digest")
    return lines


def _directories(run: ResyncProgress) -> str:
    """How far the comparison of directories got, while some are left."""
    if not run.directories_remaining:
        return ""
    return (f"{run.directories_checked} directories compared ({run.entries_checked} entries), "
            f"{run.directories_remaining} left; ")
