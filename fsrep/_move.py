"""``fsrep-move MOUNTPOINT --group ID --to STORE2``: a consistency group's
data moved to another directory while the mount serves it.

How this works, within one file system: the group's directory is renamed
to STORE2 in one step of the event loop, so no client request waits on it;
open files keep their descriptors (a rename moves no inode), the inode
numbers the kernel knows stay, and so do the dirty set, the activity log
and the pseudo snapshots (they go by inode, or by path within the group).
An empty directory takes the group's old place in the store, so that its
parent still lists it; the mount serves the group from STORE2
(``Tree.graft``), and so does every later mount (``GroupRecord.store``).
The replica is the same one: the relationship goes on where it is, and
nothing crosses the link.

Crash safety: the intent (``GroupRecord.moving_to``, with the inode of the
group's directory) is saved before the rename. A mount that finds it
looks for that inode at STORE2 and finishes the move, or forgets it.

Caveats:
- Across file systems a move copies the data while clients work on, then
  switches in one short pause: ``_move_across``.
- The default group's data is the store itself: unmount and mount from
  the new place instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import tracking

from ._config import GroupRecord, GroupStore
from ._tree import Tree

if TYPE_CHECKING:
    from ._groups import Group, Groups

log = logging.getLogger(__name__)


ROOM = 64 * 1024 * 1024  # kept free on a move's destination beyond the data and 2%


class MoveRefused(Exception):
    """The move cannot be made; the message is one line for the operator
    (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class Done:
    """A move that was made."""

    source: str
    destination: str
    seconds: float


def home(store: Path, record: GroupRecord) -> Path:
    """Where group *record*'s data lives: its own store once moved, else
    its directory of the mount's store."""
    return Path(record.store) if record.store else store / record.path


def settle_interrupted(store: Path, record: GroupRecord) -> bool:
    """A move a crash cut short: finished when the group's directory was
    renamed (its inode is at the destination), else forgotten. Whether
    *record* changed (the caller saves it)."""
    if not record.moving_to:
        return False
    target = Path(record.moving_to)
    try:
        moved = os.lstat(target).st_ino == record.moving_ino
    except OSError:
        moved = False
    if moved:
        record.store = "" if target == store / record.path else record.moving_to
        log.warning("group %s: a move to %s was cut short after its rename; it is finished now", record.id, target)
    else:
        log.warning("group %s: a move to %s was cut short before its rename; the group stays in %s", record.id,
                    target, home(store, record))
    record.moving_to, record.moving_ino = "", 0
    return True


def check_destination(to: str, group: Group, store: Path, mountpoint: Path, mount: Groups) -> Path:
    """STORE2 as a move of *group* may use it: a new or empty directory
    outside the mount, the store and every group's data.

    Raises:
        MoveRefused: it cannot (one line naming why and what to do).
    """
    record = group.rel.record
    if not record.path:
        raise MoveRefused("the default group's data is the store itself: unmount, move the store, and mount it "
                          "from its new place")
    if not os.path.isabs(to):
        raise MoveRefused(f"--to {to}: give an absolute path")
    target = Path(os.path.normpath(to))
    parent = target.parent.resolve()
    target = parent / target.name
    current = Path(group.tree.root)
    if target == current:
        raise MoveRefused(f"group /{record.path} is in {target} already")
    places = [("the mount", mountpoint)] + [("the data of group " + (f"/{g.rel.record.path}" if g.rel.record.path
                                                                     else "/ (the store)"), Path(g.tree.root))
                                             for g in mount.all]
    for what, place in places:
        if target == place or place in target.parents:
            if target != store / record.path:  # back to the group's own place in the store: allowed
                raise MoveRefused(f"--to {target} is inside {what} ({place}); give a directory outside it")
    try:
        st = target.stat() if target.exists() else parent.stat()
    except OSError as exc:
        raise MoveRefused(f"--to {target}: {exc.strerror or exc}; make its parent directory first") from None
    if not stat.S_ISDIR(st.st_mode):
        raise MoveRefused(f"--to {target} is not a directory")
    if target.exists() and any(target.iterdir()):
        raise MoveRefused(f"--to {target} is not empty; give a new or empty directory")
    return target


def across(target: Path, group: Group) -> bool:
    """Whether *target* (checked) is on another file system than *group*'s
    data: the move copies it (``_move_across``) instead of one rename."""
    st = os.stat(target if os.path.lexists(target) else target.parent)
    return st.st_dev != os.fstat(group.tree.root_fd).st_dev


def check_room(target: Path, group: Group, mount: Groups) -> None:
    """What a copy to *target* needs of it: the group holds no other
    group, and the file system has room for its data. In a worker thread
    (it reads the whole tree's metadata).

    Raises:
        MoveRefused: it has not (one line naming why and what to do).
    """
    prefix = group.prefix
    inner = [g for g in mount.all if g is not group and prefix and g.prefix.startswith(prefix + b"/")]
    if inner:
        raise MoveRefused(f"group /{prefix.decode(errors='replace')} holds group "
                          f"/{inner[0].prefix.decode(errors='replace')}: a move to another file system copies one "
                          f"group; move the inner one first, or together by moving them within one file system")
    tree = Tree(group.tree.root)  # its own: this runs in a worker thread
    try:
        needed = tree.data_bytes()
    finally:
        tree.close()
    fs = os.statvfs(target if os.path.lexists(target) else target.parent)
    free = fs.f_bavail * fs.f_frsize
    if free < needed + needed // 50 + ROOM:
        raise MoveRefused(f"--to {target}: no space for the group's data ({needed / 2**20:.1f} MiB, and "
                          f"{ROOM // 2**20} MiB to spare; {free / 2**20:.1f} MiB free there); free space or give "
                          f"another disk")


def move(group: Group, target: Path, store: Path, groups: GroupStore, mount_tree: Tree) -> Done:
    """Move *group*'s data to *target* (checked by ``check_destination``):
    the intent saved, the rename, the old place kept as an empty directory,
    the mount serving the group from *target*, the record saved. One step:
    it never awaits.

    Raises:
        MoveRefused: the rename failed (nothing changed).
        OSError: the record could not be saved after the rename (the move
            is made; the next mount finishes it from the saved intent).
    """
    record, tree = group.rel.record, group.tree
    source = Path(tree.root)
    original = store / record.path
    started = time.monotonic()
    record.moving_to, record.moving_ino = str(target), os.stat(tree.root_fd).st_ino
    try:
        groups.save(record)
    except OSError as exc:
        record.moving_to, record.moving_ino = "", 0
        raise MoveRefused(f"cannot save the move's intent in {groups.dir} ({exc.strerror or exc}); nothing moved") \
            from None
    try:
        os.rename(source, target)
    except OSError as exc:
        record.moving_to, record.moving_ino = "", 0
        with contextlib.suppress(OSError):
            groups.save(record)
        raise MoveRefused(f"cannot move {source} to {target}: {exc.strerror or exc}; nothing moved") from None
    if source == original:
        st = os.stat(tree.root_fd)
        os.mkdir(original, stat.S_IMODE(st.st_mode))  # stands in for the group in its parent's listing
        os.chown(original, st.st_uid, st.st_gid)
    for directory in {source.parent, target.parent}:
        tracking.fsync_directory(directory)
    tree.root = str(target)
    if target == original:
        mount_tree.ungraft(group.prefix)
    else:
        mount_tree.graft(group.prefix, tree)
    record.store = "" if target == original else str(target)
    record.moving_to, record.moving_ino = "", 0
    seconds = time.monotonic() - started
    log.info("group %s (/%s): moved from %s to %s in %.3fs (one rename: open files, inode numbers and the "
             "relationship with %s stay)", record.id, record.path, source, target, seconds, record.secondary)
    groups.save(record)
    return Done(str(source), str(target), seconds)

