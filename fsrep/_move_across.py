"""``fsrep-move MOUNTPOINT --group ID --to STORE2`` when STORE2 is on
another file system (another disk): the group's data is copied there while
clients keep working, then the mount switches to the copy in one short
pause. (Within one file system a move is one rename: ``_move``.)

How this works:
1. The intent is saved (``GroupRecord.moving_to``, phase "copy"); a watch
   (a tracker of the group's recorder) notes every change from then on,
   and the whole tree is copied (``TreeCopy``) in a worker thread.
2. Catch-up passes, each in the thread, copy what the watch noted during
   the pass before, until what is left is small (CUTOVER_BYTES and
   CUTOVER_DIRS) or PASSES passes were made.
3. The cutover: once no resync runs (and none may start), new changes
   wait at the gate, what was sent is acknowledged, and the last catch-up
   runs. Then, in one step of the event loop: the record says the group
   is at STORE2 (phase "cutover"); the trackers go under the copy's inode
   numbers and are saved (``Relationship.rekey``); every inode the kernel
   knows keeps its FUSE number (``InodeTable.rehome``); every open file and
   not yet read directory of the group gets a descriptor of its copy in
   place of the old one (``dup2``: the handle the kernel holds stays); the
   group's tree serves STORE2 (``Tree.reroot``, a graft of the mount tree)
   and the record says phase "cleanup". Changes go on.
4. After a grace for the requests under way at the cutover, the old data
   is removed (the group's place in the store stays, an empty directory,
   as after a move by rename) and the intent cleared.
The relationship with the secondary goes on throughout: changes made
during the copy are replicated as ever, and nothing else crosses the link.

Crash safety (``settle``, when the store is mounted again): in phase
"copy" the copy is removed and the group stays where it was; in "cutover"
the group is served from STORE2 and compared whole with its replica (its
trackers may be under either file system's numbers); in "cleanup" the old
data is removed.

Abort (``fsrep-move --abort``, or the daemon stopping) before the cutover
removes the copy: the group is as it was, and in sync.

Caveats:
- A directory being listed at the cutover goes on listing the old one
  (its offsets are the old file system's); the old data is removed once
  no such listing is open, or after OLD_LISTINGS seconds — then a handle
  still open lists the copy from where it is asked to (a rewind lists it
  whole; an offset of the old listing means nothing there).
- A file open after its last name was removed stays on the old file
  system until closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import outcome
import trio

import tracking

from ._config import GroupRecord, GroupStore
from ._move import Done, MoveRefused
from ._progress import MoveRun
from ._tree import Tree
from ._tree_copy import Cancelled, FileChange, TreeCopy, emptied

if TYPE_CHECKING:
    from ._groups import Group
    from ._ops import Operations

log = logging.getLogger(__name__)
T = TypeVar("T")

PASSES = 8  # catch-up passes before the cutover, at most
CUTOVER_BYTES = 64 * 1024 * 1024  # left to copy for the cutover to begin: what the last pass copies, paused
CUTOVER_DIRS = 1024
GRACE = 1.0  # seconds for the requests under way at the cutover to end before the old data goes
OLD_LISTINGS = 10.0  # seconds the listings of old directories open at the cutover may take (ls takes ms)
KEPT_FLAGS = os.O_ACCMODE | os.O_APPEND | os.O_DIRECT | os.O_SYNC | os.O_DSYNC | os.O_NOATIME


class Watch:
    """A tracker of the group's recorder: what changed since ``take``."""

    def __init__(self) -> None:
        self.dirty = tracking.DirtySet()

    def record(self, marks: tracking.Marks, seq: int) -> None:
        self.dirty.apply(marks)

    def take(self) -> tracking.DirtySet:
        taken, self.dirty = self.dirty, tracking.DirtySet()
        return taken


def settle(store: Path, record: GroupRecord) -> str | None:
    """Finish a move across file systems a crash cut short: in phase
    "copy" its copy is removed and the group stays; later, the old data is
    removed. Returns why the group must be compared whole with its replica
    (a crash during the cutover), else None. The caller saves *record*
    when it had a phase."""
    phase, target, source = record.moving_phase, Path(record.moving_to), Path(record.moving_from)
    if not phase:
        return None
    why = None
    if phase == "copy":
        _remove_quietly(target, keep_root=True)
        log.warning("group %s: a move to %s was cut short while copying; the copy is removed and the group stays "
                    "in %s", record.id, target, source)
    else:
        _remove_quietly(source, keep_root=source == store / record.path)
        log.warning("group %s: a move from %s to %s was cut short after its copy was complete; the group is served "
                    "from %s and the old data is removed", record.id, source, target, target)
        if phase == "cutover":
            why = (f"a move to {target} was cut short during its cutover: what tracks the changes may be under "
                   f"either file system's inode numbers")
    record.moving_to, record.moving_from, record.moving_ino, record.moving_phase = "", "", 0, ""
    return why


def _remove_quietly(root: Path, *, keep_root: bool) -> None:
    """Remove what *root* holds (and *root* itself, unless *keep_root*);
    what cannot be removed is said in the log and left."""
    try:
        tree = Tree(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("cannot remove %s (%s); remove it by hand", root, exc.strerror or exc)
        return
    try:
        emptied(tree)
        if not keep_root:
            os.rmdir(root)
    except OSError as exc:
        log.warning("cannot remove all of %s (%s); remove what is left by hand", root, exc.strerror or exc)
    finally:
        tree.close()


async def _in_thread(run: MoveRun, work: Callable[[], T]) -> T:
    """*work* in a worker thread; a cancellation (the daemon stopping)
    tells it to stop (``run.abort``), and is raised once it has."""
    done = False

    async def stop_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            if not done:
                run.abort.set()
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_cancel)
        result = await outcome.acapture(trio.to_thread.run_sync, work)  # raised below, not in a group
        done = True
        nursery.cancel_scope.cancel()
    return result.unwrap()


def _items(dirty: tracking.DirtySet, locate: Callable[[int], bytes | None]
           ) -> tuple[list[tuple[int, bytes]], list[FileChange]]:
    """What a catch-up is given from what the watch noted: each inode at
    its path now, as far as the kernel knows it (else as noted)."""
    def path(ino: int) -> bytes | None:
        found = locate(ino)
        hint = dirty.hint(ino)
        return found if found is not None else hint if hint != tracking.UNNAMED else None

    dirs = [(ino, p) for ino in dirty.dirs() if (p := path(ino)) is not None]
    files = [(ino, p, [(r.first * tracking.REGION_SIZE, r.count * tracking.REGION_SIZE) for r in dirty.ranges(ino)])
             for ino in dirty.files() if (p := path(ino)) is not None]
    return dirs, files


async def _catch_up(run: MoveRun, watch: Watch, copier: TreeCopy, locate: Callable[[int], bytes | None]) -> None:
    """One catch-up pass over what the watch noted, in the worker thread;
    what it could not find at its path goes to the next one."""
    taken = watch.take()
    dirs, files = _items(taken, locate)
    done = await _in_thread(run, functools.partial(copier.catch_up, dirs, files))
    for ino, path in done.missed_dirs:
        watch.dirty.mark_dir(ino, path)
    for ino, path in done.missed_files:
        for regions in taken.ranges(ino):
            watch.dirty.mark_regions(ino, path, regions)
        if taken.meta_dirty(ino):
            watch.dirty.mark_meta(ino, path)


def _last_pass(copier: TreeCopy, dirs: list[tuple[int, bytes]],
               files: list[FileChange]) -> None:
    """The catch-up with changes held, and the copy made durable."""
    copier.catch_up(dirs, files)
    copier.target.sync()


def _small(dirty: tracking.DirtySet) -> bool:
    return dirty.dirty_bytes <= CUTOVER_BYTES and dirty.dir_count <= CUTOVER_DIRS


def _made(target: Path, root: os.stat_result) -> bool:
    """Make *target* if it is not there; whether it was made. In a worker
    thread: a destination disk that hangs must not hang the mount."""
    if os.path.lexists(target):
        return False
    os.mkdir(target, stat.S_IMODE(root.st_mode))
    return True


async def move_across(group: Group, target: Path, store: Path, groups: GroupStore, ops: Operations) -> Done:
    """Move *group*'s data to *target*, on another file system (checked by
    ``check_destination``), while clients keep working.

    Raises:
        MoveRefused: the move was aborted or failed before its cutover
            (the copy is removed; the group is where it was).
        trio.Cancelled: the daemon stops (likewise, before the cutover).
    """
    rel, record, tree = group.rel, group.rel.record, group.tree
    source = Path(tree.root)
    run = rel.move = MoveRun(str(source), str(target), trio.current_time())
    made = False
    try:
        made = await trio.to_thread.run_sync(_made, target, os.stat(tree.root_fd))
        record.moving_to, record.moving_from, record.moving_phase = str(target), str(source), "copy"
        groups.save(record)
    except OSError as exc:
        record.moving_to, record.moving_from, record.moving_phase = "", "", ""
        if made:
            await trio.to_thread.run_sync(os.rmdir, target)
        run.finish(f"failed: {exc.strerror or exc}", trio.current_time())
        raise MoveRefused(f"cannot begin the move to {target} ({exc.strerror or exc}); nothing moved") from None
    watch = Watch()
    rel.recorder.trackers.append(watch)
    trees: list[Tree] = []
    log.info("group %s (/%s): moving from %s to %s, another file system: copying while clients work on",
             record.id, record.path, source, target)
    try:
        trees.extend(await trio.to_thread.run_sync(lambda: (Tree(source), Tree(target))))
        copy_from, copy_to = trees
        copier = TreeCopy(copy_from, copy_to, cancelled=run.abort.is_set, copied=run.copied)

        def first_copy() -> int:
            run.total_bytes = copy_from.data_bytes()
            return copier.copy_all()

        await _in_thread(run, first_copy)
        locate = group.locator(ops.inodes)
        for _ in range(PASSES):
            if _small(watch.dirty):
                break
            run.phase, run.passes = "catching up", run.passes + 1
            await _catch_up(run, watch, copier, locate)
        run.phase = "cutting over"
        async with rel.scheduler.held():
            if not _small(watch.dirty) and not run.abort.is_set():  # what piled up while a resync ran
                await _catch_up(run, watch, copier, locate)
            with rel.stream.holding_mutations():
                await rel.drained(rel.pipeline.drain())  # a link lost meanwhile left those changes dirty: as good
                await trio.lowlevel.checkpoint()  # the requests those acks woke go on to their replies
                paused = trio.current_time()
                taken = watch.take()
                dirs, files = _items(taken, locate)
                await _in_thread(run, functools.partial(_last_pass, copier, dirs, files))
                if run.abort.is_set():
                    raise Cancelled()
                old_device = _cut_over(group, copier, target, store, groups, ops)
                run.pause_seconds = trio.current_time() - paused
    except BaseException as exc:  # before the cutover, whatever it was: the copy goes, the group stays
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: _remove_quietly(target, keep_root=not made))
        record.moving_to, record.moving_from, record.moving_phase = "", "", ""
        with contextlib.suppress(OSError):
            groups.save(record)
        why = ("aborted" if isinstance(exc, Cancelled | trio.Cancelled | KeyboardInterrupt)
               else f"failed: {exc.strerror or exc}" if isinstance(exc, OSError) else f"failed: {exc!r}")
        run.finish(why, trio.current_time())
        log.warning("group %s (/%s): the move to %s %s; the copy is removed and the group stays in %s", record.id,
                    record.path, target, why, source)
        if not isinstance(exc, Cancelled | OSError):
            raise  # the daemon stops, or a bug (the control socket answers it)
        raise MoveRefused("the move was aborted; the copy is removed and the group stays where it was"
                          if why == "aborted" else f"cannot copy to {target} ({exc}); the copy is removed and "
                                                   f"the group stays where it was") from None
    finally:
        rel.recorder.trackers.remove(watch)
        for opened in trees:
            opened.close()
    log.info("group %s (/%s): served from %s after a pause of %.3fs for clients' changes (%d catch-up passes); "
             "the relationship with %s goes on", record.id, record.path, target, run.pause_seconds, run.passes,
             record.secondary)
    run.phase = "removing the old copy"
    await _clean_up(group, source, store, groups, ops, old_device)
    run.finish("done", trio.current_time())
    return Done(str(source), str(target), trio.current_time() - run.started_at)


def _cut_over(group: Group, copier: TreeCopy, target: Path, store: Path, groups: GroupStore, ops: Operations) -> int:
    """Serve *group* from its copy in *target*, in one step (changes are
    held); returns the device of the old data.

    Raises:
        OSError: the record could not be saved (nothing switched yet).
    """
    rel, record, tree = group.rel, group.rel.record, group.tree
    old_device, new_device = os.fstat(tree.root_fd).st_dev, os.fstat(copier.target.root_fd).st_dev
    original = store / record.path
    inodes = copier.inodes
    previous = record.store
    record.store, record.moving_phase = ("" if target == original else str(target)), "cutover"
    try:
        groups.save(record)
        tree.reroot(target)  # nothing changed in the tree when it fails
    except OSError:
        record.store, record.moving_phase = previous, "copy"
        with contextlib.suppress(OSError):
            groups.save(record)
        raise
    saved = rel.rekey(inodes)  # a failure to save is a fault status shows, retried every second
    for ino in ops.inodes.numbers():
        where = ops.effects.locate(ino)
        if where is not None and where.group is group and (old := ops.inodes.backing(ino)) in inodes:
            ops.inodes.rehome(ino, new_device, inodes[old])
    ops.inodes.moving(old_device, new_device, inodes)
    if target == original:
        ops.tree.ungraft(group.prefix)
    else:
        ops.tree.graft(group.prefix, tree)

    def reopen(fd: int, ino: int, directory: bool) -> None:
        """Give handle *fd* a descriptor of its file's copy, when it is of the old data."""
        if os.fstat(fd).st_dev != old_device or ino not in ops.inodes:
            return
        where = ops.effects.locate(ino)
        if where is None or where.group is not group:
            return  # no name left: it stays where it is until closed
        if directory:
            new = tree.open(where.path, os.O_RDONLY | os.O_DIRECTORY)
        else:
            new = tree.open_regular(where.path, fcntl.fcntl(fd, fcntl.F_GETFL) & KEPT_FLAGS)
        try:
            os.dup2(new, fd, inheritable=False)
        finally:
            os.close(new)

    for handle in list(ops.handles.files.values()):
        _reopened(reopen, handle.fd, handle.ino, False)
    for fd, listing in list(ops.handles.dirs.items()):
        if listing.stream.offset == 0:  # one being listed goes on in the old directory (see Caveats)
            _reopened(reopen, fd, listing.ino, True)
    ops.handles.moving = lambda fd, ino, directory: _reopened(reopen, fd, ino, directory)
    if saved:  # else a crash finds "cutover": the group is compared whole, as its tracking on disk is the old
        record.moving_phase = "cleanup"
        with contextlib.suppress(OSError):
            groups.save(record)
    else:
        log.warning("group %s: its tracking could not be saved under the copy's inode numbers at the move's "
                    "cutover; should this daemon stop before it is, the group is compared whole", record.id)
    return old_device


def _reopened(reopen: Callable[[int, int, bool], None], fd: int, ino: int, directory: bool) -> None:
    try:
        reopen(fd, ino, directory)
    except OSError as exc:  # gone from the copy meanwhile, say: it goes on with the old file
        log.warning("a descriptor open at a move's cutover stays on the old data (%s)", exc.strerror or exc)


async def _clean_up(group: Group, source: Path, store: Path, groups: GroupStore, ops: Operations,
                    old_device: int) -> None:
    """Once the requests under way at the cutover ended, and the listings
    of old directories did (at most OLD_LISTINGS seconds), remove the old
    data and clear the intent."""
    record = group.rel.record
    def listing_old() -> bool:
        return any(os.fstat(fd).st_dev == old_device and (where := ops.effects.locate(listing.ino)) is not None
                   and where.group is group for fd, listing in ops.handles.dirs.items())

    for _ in range(int(OLD_LISTINGS / GRACE)):
        await trio.sleep(GRACE)
        if not listing_old():
            break
    reopen = ops.handles.moving
    for fd, listing in list(ops.handles.dirs.items()):  # still open: a rewind lists the copy, not the old one
        if reopen is not None and os.fstat(fd).st_dev == old_device:
            reopen(fd, listing.ino, True)
            if os.fstat(fd).st_dev != old_device:
                listing.stream.moved()
    ops.handles.moving = None
    group.rel.moved_inodes = None
    ops.inodes.moved(old_device)  # before the old inodes go: the file system may give their numbers again
    original = store / record.path
    await trio.to_thread.run_sync(lambda: _remove_quietly(source, keep_root=source == original))
    if record.moving_phase == "cutover" and not group.rel.ledger.save_dirty():
        return  # the next mount finds "cutover" and compares the group whole
    record.moving_to, record.moving_from, record.moving_phase = "", "", ""
    try:
        groups.save(record)
    except OSError as exc:
        log.warning("group %s: cannot save that its move is finished (%s); the next mount finishes it",
                    record.id, exc.strerror or exc)
