"""A resync from a common pseudo snapshot: when the dirty set cannot be
trusted (lost, damaged, a crash that lost the activity log, a replica that
came back from an older position), what may differ is

    what changed here since the snapshot  ∪  its intercept log
    ∪  what changed on the replica since it (asked for, by path)

and that, put in the dirty set, is what a quick resync then moves — not
the whole tree compared by digest.

The replica's changes come by path (it applies frames by path). Each is
marked here as what the quick resync compares: the file at that path (its
regions; whole when the replica's entry was replaced), and the directory
holding it — or the nearest directory above that still exists here, so an
entry the replica has and this side does not is removed.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Awaitable, Callable

import tracking
import transport as tp

from ._progress import ResyncRun
from ._pull import pull
from ._stream import ResyncStream
from ._tree import Tree

log = logging.getLogger(__name__)


async def based_on_snapshot(stream: ResyncStream, tree: Tree, run: ResyncRun) -> bool:
    """Put what may differ since the run's snapshot (the one asked for, or
    the newest common one) in the dirty set, in place of "everything".
    Returns False when no common snapshot can say: the caller compares
    the whole tree instead.

    Raises:
        LinkDown: the link failed while the replica was asked.
    """
    snapshots, record = stream.snapshots, stream.record
    sid = snapshots.basis(run.basis or None)
    if sid is None:
        log.info("group %s: no common snapshot%s to resync from; comparing the whole tree by digest instead",
                 record.id, f" named {run.basis}" if run.basis else "")
        return False
    changes = snapshots.may_differ(sid)
    theirs = tracking.PathChanges()  # by path, as the replica said: what a pull takes

    def mark(path: bytes, flags: int, runs: list[tuple[int, int]]) -> None:
        mark_reported(changes, tree, path, flags, runs)
        if run.pull_into:
            theirs.mark(path, flags or tracking.META)
            for first, count in runs:
                theirs.mark_regions(path, tracking.RegionRange(first, count))

    if not sid.auto and not await _asked(run, replica_changes(stream, sid.name, mark)):
        log.info("group %s: the replica no longer holds %s; comparing the whole tree by digest instead",
                 record.id, sid)
        return False
    if run.keep_divergent and not run.kept:
        await _asked(run, _keep_divergent(stream, sid, run))
    if run.pull_into and not run.pulled:
        await _asked(run, pull(stream, tree, run, sid, theirs))
    dirty = stream.dirty
    why = dirty.reason if dirty.everything else "asked for"
    dirty.merge(changes)
    dirty.clean_everything()
    stream.retracked()
    # Only now, with a side given up kept and the other's pulled: a restart of the run goes on from the dirty
    # set. Cut short before (the link lost, the run cancelled with its session), the run asks again.
    run.based = True
    run.mode, run.basis = "snapshot", sid.name
    log.info("group %s: resync from %s, common to both sides (%s): %d bytes to send at most (%d files and %d "
             "directories may differ)", record.id, sid, why, dirty.dirty_bytes, len(dirty.files()), dirty.dir_count)
    return True


async def _keep_divergent(stream: ResyncStream, sid: tracking.SnapshotId, run: ResyncRun) -> bool:
    """Have the replica copy what changed there since *sid* out of its tree
    before the run overwrites it (split brain, its side given up).

    Raises:
        LinkDown: it could not (nothing is overwritten: the run ends).
    """
    reply = await stream.ask(lambda seq: tp.KeepDivergent(seq=seq, name=sid.name), early=True)()
    assert isinstance(reply, tp.Kept)
    if not reply.found:
        raise tp.LinkDown(f"the secondary holds no snapshot {sid.name} to keep its side of the split brain from; "
                          f"nothing was given up")
    run.kept, run.kept_side = reply.where, "secondary"
    log.warning("group %s: split brain resolved by giving up the secondary's side: its %d entries (%d bytes of "
                "data) changed since %s are kept on the secondary in %s", stream.record.id, reply.entries,
                reply.data, sid, reply.where)
    return True


async def _asked(run: ResyncRun, question: Awaitable[bool]) -> bool:
    """*question*'s answer; a link lost before it leaves the run to try again."""
    try:
        return await question
    except tp.LinkDown:
        run.based = False
        raise


async def replica_changes(stream: ResyncStream, name: str,
                          each: Callable[[bytes, int, list[tuple[int, int]]], None]) -> bool:
    """Ask the replica what changed there since snapshot *name*, page by
    page, and pass each change to *each* (path, flags, runs). False when
    it has no such snapshot.

    Raises:
        LinkDown: the link failed, or the replica repeats a page.
    """
    stream.prepare()
    after, started = b"", 0
    while True:
        reply = await stream.ask(lambda seq, after=after, started=started: tp.SnapshotChanges(
            seq=seq, name=name, started=started, after=after), early=True)()
        assert isinstance(reply, tp.Changes)
        if not reply.found:
            return False
        items = reply.items()
        for path, flags, runs in items:
            each(path, flags, runs)
        if not reply.more:
            return True
        if not items or (started and _order(items[-1][0]) <= _order(after)):
            raise tp.LinkDown(f"the secondary repeats its changes since snapshot {name}; dropping the link")
        after, started = items[-1][0], 1


def _order(path: bytes) -> list[bytes]:
    """The replica lists paths in order of their components."""
    return path.split(b"/") if path else []


def mark_reported(dirty: tracking.DirtySet, tree: Tree, path: bytes, flags: int,
                  runs: list[tuple[int, int]]) -> None:
    """Mark in *dirty* what the quick resync must compare for a change the
    replica made at *path* (see the module docstring)."""
    try:
        st = tree.lstat(path)
    except OSError:
        _mark_directory_above(dirty, tree, path)  # the replica has what this side does not: it goes
        return
    ino = st.st_ino
    if stat.S_ISDIR(st.st_mode):
        if flags & (tracking.DIR | tracking.WHOLE):
            dirty.mark_dir(ino, path)
        if flags & (tracking.META | tracking.WHOLE):
            dirty.mark_meta(ino, path)
        return
    for first, count in runs:
        dirty.mark_regions(ino, path, tracking.RegionRange(first, count))
    if flags & tracking.WHOLE:
        if stat.S_ISREG(st.st_mode) and st.st_size:
            dirty.mark_regions(ino, path, tracking.regions_for(0, st.st_size))
        _mark_directory_above(dirty, tree, path)  # the replica's entry may be of another kind or size
    if flags or runs:
        dirty.mark_meta(ino, path)  # its size and times follow from the data


def _mark_directory_above(dirty: tracking.DirtySet, tree: Tree, path: bytes) -> None:
    """Mark the nearest directory above *path* that exists here (the
    group's root at last)."""
    while path:
        path = path.rpartition(b"/")[0]
        try:
            st = tree.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            dirty.mark_dir(st.st_ino, path)
            return
