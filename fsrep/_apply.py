"""What each operation frame does to a replica: one table, ``TABLE``.

Every operation frame a primary may send has one row: its kind and its
handler. The kind says what the handler acts on and what becomes of its
result:

- ``MUTATION`` — changes the tree (or, Fsync and Purge, makes it durable or
  empties it): ``handler(tree, frame)``, then the mtimes the frame carries.
  The primary applies its own mutations through the same rows
  (``Tree.apply`` calls ``mutate``), so an operation that succeeded there
  does the same thing here.
- ``QUESTION`` — ListDir, Checksum, ListData, SnapshotChanges: reads the
  replica (its tree, or its snapshots) at this point of the stream and
  returns the answer frame: ``handler(replica, frame)``; it changes nothing.
- ``HISTORY`` — Generation: changes the replica's generation history, not
  its tree: ``handler(history, frame)`` returns the new history.
- ``SNAPSHOT`` — Snapshot, RetireSnapshot: changes the replica's pseudo
  snapshots, not its tree: ``handler(replica, frame)``.

A mutation's row also says what it changes since a snapshot (``marks``):
while the replica holds one, ``marks(changes, tree, frame)`` records it by
path in the newest snapshot's delta, before the handler runs (a frame that
fails half way has changed something all the same). These mirror what the
primary marks for the same change (``_effects``), so the two sides' records
compare path for path. A replica without snapshots pays one method call.

``apply(replica, frame)`` is the secondary's one way in. **The seam**: every
frame that changes the replica (every row but a question) passes
``replica.before_apply(frame)`` there, just before its handler runs. That is
where an undo log will record what the frame is about to overwrite (the old
bytes of a write's regions, the entry a Remove or Purge drops), so that a
resync target can be rolled back to its last consistent point
(``_undo``): ResyncBegin opens it, and the Generation that ends a resync is
where it may let that go.

The handlers reach the tree only through ``Tree``'s confined descriptors
(``at``, ``entry``, ``writable``, ``held_parent``): none of them follows a
symlink or leaves the root.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import tracking
import transport as tp

from . import _replica_snapshots as replica_snapshots
from ._pipeline import Position
from ._reserved import is_staged
from ._sparse import clone_data, proc_path, punch, pwrite_all, renameat2, set_mtime

if TYPE_CHECKING:
    from ._tree import Tree

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    MUTATION = "mutation"  # changes the tree; passes before_apply first
    QUESTION = "question"  # reads the tree and answers; changes nothing
    HISTORY = "history"  # changes the replica's generation history; passes before_apply first
    SNAPSHOT = "snapshot"  # changes the replica's pseudo snapshots; passes before_apply first


_M, _Q, _H, _S = Kind.MUTATION, Kind.QUESTION, Kind.HISTORY, Kind.SNAPSHOT
Marks = Callable[[tracking.PathChanges, "Tree", Any], None]


@dataclass(frozen=True, slots=True)
class Row:
    """How one frame type is applied: *handler* acts on what *kind* says;
    *marks* records what a mutation changes since a snapshot (None: it
    changes nothing a snapshot tracks)."""

    kind: Kind
    handler: Callable[[Any, Any], Any]
    marks: Marks | None = None


@runtime_checkable
class Target(Protocol):
    """What a replica's stream is applied to: the secondary's ``Replica``."""

    id: str
    tree: Tree
    generations: list[bytes]  # the primary's, oldest first
    snapshots: tracking.SnapshotChain[tracking.PathChanges]  # oldest first
    answering: tuple[str, tracking.PathChanges] | None  # the changes a paged answer is being given from

    def before_apply(self, op: tp.Operation) -> None:
        """Called just before each frame that changes the replica."""

    def divergent_dir(self) -> Path:
        """Where a new copy of the replica's side of a split brain goes."""


def row_of(op: tp.Operation) -> Row:
    """The row of *op*'s type.

    Raises:
        OSError: ENOSYS, a frame type without a row (a bug: the table
            covers every operation the transport decodes).
    """
    row = TABLE.get(type(op))
    if row is None:
        raise OSError(errno.ENOSYS, f"no handler for {type(op).__name__}")
    return row


def apply(replica: Target, op: tp.Operation) -> tp.Frame | None:
    """Apply one frame of *replica*'s stream; the answer to a question.

    Raises:
        OSError: the frame failed; the tree is as the failed system call
            left it.
    """
    row = row_of(op)
    kind = row.kind
    if kind is _Q:
        answer: tp.Frame = row.handler(replica, op)
        return answer
    if kind is _M and _of_staged_backup(op):
        _change(replica.tree, op, row.handler)  # a clone backup staged outside the tree: no undo, no snapshot record
        return None
    replica.before_apply(op)  # the seam: see the module docstring
    if kind is _M:
        if row.marks is not None:
            changes = replica.snapshots.current()
            if changes is not None:
                row.marks(changes, replica.tree, op)
        _change(replica.tree, op, row.handler)
        return None
    if kind is _S:
        row.handler(replica, op)
        return None
    replica.generations = row.handler(replica.generations, op)  # the one other kind: HISTORY
    log.info("group %s: replica now at %s", replica.id, Position(replica.generations[-1].hex(), op.seq))
    return None


_STAGED_CHANGES = (tp.Clone, tp.Write, tp.WriteRuns, tp.Punch, tp.SetAttr, tp.SetXattr, tp.RemoveXattr,
                   tp.KeepXattrs, tp.Remove)  # what a resync does to a staged clone backup (``_clone_backups``)


def _of_staged_backup(op: tp.Operation) -> bool:
    """Whether mutation *op* changes a staged clone backup (its ``path``)
    rather than the replica's tree. A clone of one into the tree (``src``)
    is a change of the tree.

    Raises:
        OSError: EPERM, *op* would move an entry between the two.
    """
    staged = [name for name, kind in op.FIELDS if kind == "path" and is_staged(getattr(op, name))]
    if not staged or (staged == ["src"] and isinstance(op, tp.Clone)):
        return False
    if staged == ["path"] and isinstance(op, _STAGED_CHANGES):
        return True
    raise OSError(errno.EPERM, f"{type(op).__name__} cannot move an entry between a staged clone backup and the tree")


def mutate(tree: Tree, op: tp.Operation) -> None:
    """Apply mutation *op* to *tree* (the primary's store goes through
    here, past no seam: only a replica keeps an undo log).

    Raises:
        OSError: as ``apply``; ENOSYS for a frame that is no mutation.
    """
    row = row_of(op)
    if row.kind is not _M:
        raise OSError(errno.ENOSYS, f"{type(op).__name__} is not a mutation")
    _change(tree, op, row.handler)


def _change(tree: Tree, op: tp.Operation, handler: Callable[[Tree, Any], None]) -> None:
    """Run a mutation's handler, then set the mtimes its frame carries."""
    handler(tree, op)
    if op.TIMES:
        for path, mtime_ns in op.mtimes():
            tree.set_mtime(path, mtime_ns)


# --- questions ------------------------------------------------------------------


def _list_dir(replica: Target, op: tp.ListDir) -> tp.Listing:
    entries, more = replica.tree.entries(op.path, op.after, tp.MAX_LISTING)
    return tp.Listing(seq=op.seq, more=int(more), entries=tp.encode_entries(entries))


def _checksum(replica: Target, op: tp.Checksum) -> tp.Digests:
    return tp.Digests(seq=op.seq, digests=replica.tree.digests(op.path, op.offset, op.count))


def _list_data(replica: Target, op: tp.ListData) -> tp.DataMap:
    runs, end = replica.tree.data_map(op.path, op.offset, op.length, tp.MAX_RUNS)
    return tp.DataMap(seq=op.seq, end=end, runs=tp.pack_runs(runs))


def _fetch(replica: Target, op: tp.Fetch) -> tp.Fetched:
    """The entry as the replica holds it (see ``tp.Fetch``); read through
    descriptors of the tree, so never outside the replica root."""
    tree = replica.tree
    try:
        st = tree.lstat(op.path)
    except (FileNotFoundError, NotADirectoryError):
        return tp.Fetched(seq=op.seq, found=0)
    target, data = b"", b""
    if stat.S_ISLNK(st.st_mode):
        target = tree.readlink(op.path)
    elif stat.S_ISREG(st.st_mode) and op.length and op.offset < st.st_size:
        fd = tree.open_regular(op.path, os.O_RDONLY)
        try:
            data = os.pread(fd, min(op.length, st.st_size - op.offset), op.offset)
        finally:
            os.close(fd)
    xattrs = [] if stat.S_ISLNK(st.st_mode) else [(n, tree.getxattr(op.path, n)) for n in tree.listxattr(op.path)]
    try:
        return tp.Fetched(seq=op.seq, found=1, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, rdev=st.st_rdev,
                          size=st.st_size, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, target=target,
                          xattrs=tp.pack_xattrs(xattrs), data=data)
    except tp.LocalProtocolError as exc:  # more extended attributes than a frame carries
        raise OSError(errno.E2BIG, f"{os.fsdecode(op.path)!r}: {exc}") from None


# --- history --------------------------------------------------------------------


def _generation(history: list[bytes], op: tp.Generation) -> list[bytes]:
    return tracking.generations.extend(history, op.generation)


# --- data -----------------------------------------------------------------------


def _write(tree: Tree, op: tp.Write) -> None:
    fd = tree.writable(op.path)
    pwrite_all(fd, op.data, op.offset)
    _stamp(fd, op.mtime_ns)


def _write_runs(tree: Tree, op: tp.WriteRuns) -> None:
    fd = tree.writable(op.path)
    for offset, data in op.pieces():
        pwrite_all(fd, data, offset)
    _stamp(fd, op.mtime_ns)


def _punch(tree: Tree, op: tp.Punch) -> None:
    fd = tree.writable(op.path)
    for offset, length in op.run_list():
        punch(fd, offset, length)
    _stamp(fd, op.mtime_ns)


def _stamp(fd: int, mtime_ns: int) -> None:
    """Give file *fd* the mtime a data frame carries (none: as the change left it)."""
    if mtime_ns != tp.NO_TIME:
        set_mtime(fd, None, mtime_ns)


# --- attributes -----------------------------------------------------------------


def _set_mode(fd: int, mode: int) -> None:
    os.chmod(proc_path(fd), stat.S_IMODE(mode))


def _setattr(tree: Tree, op: tp.SetAttr) -> None:
    if op.fields & tp.ATTR_SIZE:
        os.ftruncate(tree.writable(op.path), op.size)
    if op.fields & (tp.ATTR_UID | tp.ATTR_GID | tp.ATTR_MODE | tp.ATTR_TIMES):
        with tree.entry(op.path) as fd:
            target = proc_path(fd)
            if op.fields & (tp.ATTR_UID | tp.ATTR_GID):
                uid = op.uid if op.fields & tp.ATTR_UID else -1
                gid = op.gid if op.fields & tp.ATTR_GID else -1
                os.chown(target, uid, gid)
            if op.fields & tp.ATTR_MODE:
                _set_mode(fd, op.mode)
            if op.fields & tp.ATTR_TIMES:
                os.utime(target, ns=(op.atime_ns, op.mtime_ns))  # a symlink's own: the fd names it
    if op.fields & tp.ATTR_MTIME:
        tree.set_mtime(op.path, op.mtime_ns)


def _setxattr(tree: Tree, op: tp.SetXattr) -> None:
    with tree.entry(op.path) as fd:
        os.setxattr(proc_path(fd), op.name, op.value)


def _removexattr(tree: Tree, op: tp.RemoveXattr) -> None:
    with tree.entry(op.path) as fd:
        os.removexattr(proc_path(fd), op.name)


def _keepxattrs(tree: Tree, op: tp.KeepXattrs) -> None:
    keep = set(op.name_list())
    with tree.entry(op.path) as fd:
        where = proc_path(fd)
        for name in os.listxattr(where):
            if os.fsencode(name) in keep:
                continue
            try:
                os.removexattr(where, name)
            except OSError as exc:  # one this host's kernel or policy keeps (security.*): not ours to drop
                if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.ENODATA):
                    raise


# --- namespace ------------------------------------------------------------------


def _own(tree: Tree, path: bytes, mode: int, uid: int, gid: int) -> None:
    """Give a new entry its owner, then its exact mode (chown may clear
    set-id bits, so the mode goes last)."""
    with tree.entry(path) as fd:
        os.chown(proc_path(fd), uid, gid)
        if not stat.S_ISLNK(os.stat(fd).st_mode):
            _set_mode(fd, mode)


def _create(tree: Tree, op: tp.Create) -> None:
    d, name = tree.at(op.path)
    tree.forget(op.path)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 stat.S_IMODE(op.mode), dir_fd=d)
    try:
        os.fchown(fd, op.uid, op.gid)
        os.fchmod(fd, stat.S_IMODE(op.mode))
    except BaseException:
        os.close(fd)
        raise
    tree.keep_writable(op.path, fd)


def _clone(tree: Tree, op: tp.Clone) -> None:
    """Both sides alike: the copy of the file this side holds at ``src``
    (the primary's own, the replica's own: no data on the link). A
    replay (CLONE_REPLAY) whose source is not here makes an empty file:
    the resync compares the copy by digest and sends what differs."""
    try:
        src = tree.open_regular(op.src, os.O_RDONLY)
    except OSError:
        if not op.flags & tp.CLONE_REPLAY:
            raise
        src = None
    try:
        d, name = tree.at(op.path)
        tree.forget(op.path)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     stat.S_IMODE(op.mode), dir_fd=d)
        try:
            if src is not None:
                clone_data(src, fd)
            os.fchown(fd, op.uid, op.gid)
            os.fchmod(fd, stat.S_IMODE(op.mode))
        except BaseException:
            os.unlink(name, dir_fd=d)  # never half a copy under the new name
            raise
        finally:
            os.close(fd)
    finally:
        if src is not None:
            os.close(src)


def _mknod(tree: Tree, op: tp.MkNod) -> None:
    d, name = tree.at(op.path)
    tree.forget(op.path)
    os.mknod(name, op.mode, op.rdev, dir_fd=d)
    _own(tree, op.path, op.mode, op.uid, op.gid)


def _mkdir(tree: Tree, op: tp.MkDir) -> None:
    d, name = tree.at(op.path)
    os.mkdir(name, stat.S_IMODE(op.mode), dir_fd=d)
    _own(tree, op.path, op.mode, op.uid, op.gid)


def _symlink(tree: Tree, op: tp.Symlink) -> None:
    d, name = tree.at(op.path)
    tree.forget(op.path)
    os.symlink(op.target, name, dir_fd=d)
    os.chown(name, op.uid, op.gid, dir_fd=d, follow_symlinks=False)


def _link(tree: Tree, op: tp.Link) -> None:
    with tree.held_parent(op.target) as (src_dir, src):
        dst_dir, dst = tree.at(op.new)
        os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)


def _rename(tree: Tree, op: tp.Rename) -> None:
    tree.forget_all()
    with tree.held_parent(op.old) as (src_dir, src):
        dst_dir, dst = tree.at(op.new)
        if op.flags:
            renameat2(src_dir, src, dst_dir, dst, op.flags)
        else:
            os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    tree.forget_all()


def _unlink(tree: Tree, op: tp.Unlink) -> None:
    d, name = tree.at(op.path)
    tree.forget(op.path)
    os.unlink(name, dir_fd=d)


def _rmdir(tree: Tree, op: tp.RmDir) -> None:
    tree.at(op.path)  # refused (a reserved or hidden path) before anything is dropped
    tree.forget_all()
    d, name = tree.at(op.path)
    os.rmdir(name, dir_fd=d)


def _remove(tree: Tree, op: tp.Remove) -> None:
    """Nothing at op.path afterwards: a file, link or whole subtree goes;
    already absent is fine."""
    tree.forget_all()
    d, name = tree.at(op.path)
    try:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(d, name)
    else:
        os.unlink(name, dir_fd=d)


def _purge(tree: Tree, op: tp.Purge) -> None:
    """Remove everything below the root."""
    tree.forget_all()
    for name in tree.listdir(b""):
        st = os.stat(name, dir_fd=tree.root_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            remove_tree(tree.root_fd, name)
        else:
            os.unlink(name, dir_fd=tree.root_fd)


def remove_tree(parent_fd: int, name: bytes) -> None:
    """Remove directory *name* of *parent_fd* and everything below it.

    A loop holding one descriptor at a time, where ``shutil.rmtree``
    recurses (and keeps one descriptor per level): a tree may be deeper
    than Python's stack or the open-file limit. Symlinks are removed, never
    followed; going back up is through ``..`` of the directory just
    emptied, so the walk never leaves the subtree it was given.
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    names = [name]  # from parent_fd down to fd
    fd = os.open(name, flags, dir_fd=parent_fd)
    try:
        while names:
            child = None
            with os.scandir(fd) as listing:
                for entry in listing:
                    if entry.is_dir(follow_symlinks=False):
                        child = os.fsencode(entry.name)
                        break
                    os.unlink(entry.name, dir_fd=fd)
            if child is not None:
                below = os.open(child, flags, dir_fd=fd)
                os.close(fd)
                fd = below
                names.append(child)
                continue
            emptied = names.pop()
            if names:
                above = os.open(b"..", flags & ~os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = above
                os.rmdir(emptied, dir_fd=fd)
            else:
                os.close(fd)
                fd = -1
                os.rmdir(emptied, dir_fd=parent_fd)
    finally:
        if fd >= 0:
            os.close(fd)


# --- durability -----------------------------------------------------------------


def _fsync(tree: Tree, op: tp.Fsync) -> None:
    if op.whole:
        tree.sync()
        return
    with tree.entry(op.path) as entry:
        mode = os.fstat(entry).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return  # a node's data is not ours to flush; its entry is flushed with its directory
        fd = os.open(proc_path(entry), os.O_RDONLY | os.O_CLOEXEC)
    try:
        (os.fdatasync if op.datasync else os.fsync)(fd)
    finally:
        os.close(fd)


def _nothing(tree: Tree, op: tp.Operation) -> None:
    pass


# --- what each change marks since a snapshot -------------------------------------------


def _marks_write(changes: tracking.PathChanges, tree: Tree, op: tp.Write) -> None:
    changes.mark_regions(op.path, tracking.regions_for(op.offset, len(op.data)))


def _marks_write_runs(changes: tracking.PathChanges, tree: Tree, op: tp.WriteRuns) -> None:
    for offset, data in op.pieces():
        changes.mark_regions(op.path, tracking.regions_for(offset, len(data)))


def _marks_punch(changes: tracking.PathChanges, tree: Tree, op: tp.Punch) -> None:
    for offset, length in op.run_list():
        changes.mark_regions(op.path, tracking.regions_for(offset, length))


def _marks_setattr(changes: tracking.PathChanges, tree: Tree, op: tp.SetAttr) -> None:
    """The metadata; a truncate, the regions between the two sizes too
    (the old one read here: one lstat, and truncates are rare)."""
    changes.mark(op.path, tracking.META)
    if op.fields & tp.ATTR_SIZE:
        try:
            old = tree.lstat(op.path).st_size
        except OSError:  # the truncate fails the same way; should it not, the whole file counts as changed
            changes.mark(op.path, tracking.WHOLE)
            return
        low, high = sorted((old, op.size))
        changes.mark_regions(op.path, tracking.regions_for(low, high - low))


def _marks_meta(changes: tracking.PathChanges, tree: Tree, op: tp.SetXattr | tp.RemoveXattr | tp.KeepXattrs) -> None:
    changes.mark(op.path, tracking.META)


def _marks_made(changes: tracking.PathChanges, tree: Tree, op: tp.Create | tp.MkNod | tp.MkDir | tp.Symlink) -> None:
    changes.mark_entry(op.path, tracking.META)


def _marks_cloned(changes: tracking.PathChanges, tree: Tree, op: tp.Clone) -> None:
    changes.mark_entry(op.path, tracking.WHOLE)  # all of its data is new here


def _marks_link(changes: tracking.PathChanges, tree: Tree, op: tp.Link) -> None:
    changes.mark_entry(op.new, tracking.META)
    changes.mark(op.target, tracking.META)  # its link count


def _marks_removed(changes: tracking.PathChanges, tree: Tree, op: tp.Unlink | tp.RmDir | tp.Remove) -> None:
    changes.mark_entry(op.path)


def _marks_rename(changes: tracking.PathChanges, tree: Tree, op: tp.Rename) -> None:
    """The entry's record moves with it; with RENAME_EXCHANGE the two
    swap, each arriving whole at the other's name."""
    if not op.flags & tp.RENAME_EXCHANGE:
        changes.move(op.old, op.new)
        return
    # Through a name no path can hold (a NUL), in the old entry's directory: nothing of it is left after.
    parent = op.old.rpartition(b"/")[0]
    aside = parent + b"/\0exchange" if parent else b"\0exchange"
    changes.move(op.old, aside)
    changes.move(op.new, op.old)
    changes.move(aside, op.new)


def _not_a_primary(replica: Target, op: tp.Adopt) -> tp.Adopted:
    return tp.Adopted(seq=op.seq, ok=0, message="this address is a secondary ('fsrep serve'), not a primary that "
                                                "accepts moves: give the address of 'fsrep mount --accept-moves' on "
                                                "the new primary")


def _marks_purge(changes: tracking.PathChanges, tree: Tree, op: tp.Purge) -> None:
    changes.mark(b"", tracking.DIR)  # every entry of the root: the primary compares them


TABLE: dict[type[tp.Operation], Row] = {
    tp.Write: Row(_M, _write, _marks_write),
    tp.WriteRuns: Row(_M, _write_runs, _marks_write_runs),
    tp.Punch: Row(_M, _punch, _marks_punch),
    tp.SetAttr: Row(_M, _setattr, _marks_setattr),
    tp.SetXattr: Row(_M, _setxattr, _marks_meta),
    tp.RemoveXattr: Row(_M, _removexattr, _marks_meta),
    tp.KeepXattrs: Row(_M, _keepxattrs, _marks_meta),
    tp.Create: Row(_M, _create, _marks_made),
    tp.Clone: Row(_M, _clone, _marks_cloned),
    tp.MkNod: Row(_M, _mknod, _marks_made),
    tp.MkDir: Row(_M, _mkdir, _marks_made),
    tp.Symlink: Row(_M, _symlink, _marks_made),
    tp.Link: Row(_M, _link, _marks_link),
    tp.Rename: Row(_M, _rename, _marks_rename),
    tp.Unlink: Row(_M, _unlink, _marks_removed),
    tp.RmDir: Row(_M, _rmdir, _marks_removed),
    tp.Remove: Row(_M, _remove, _marks_removed),
    tp.Purge: Row(_M, _purge, _marks_purge),
    tp.Fsync: Row(_M, _fsync),  # durability only: nothing a snapshot tracks
    tp.ResyncBegin: Row(_M, _nothing),  # the replica's undo log opens (its before_apply): the tree is as it was
    tp.ListDir: Row(_Q, _list_dir),
    tp.Checksum: Row(_Q, _checksum),
    tp.ListData: Row(_Q, _list_data),
    tp.Fetch: Row(_Q, _fetch),
    tp.SnapshotChanges: Row(_Q, replica_snapshots.changes_since),
    tp.KeepDivergent: Row(_Q, replica_snapshots.keep_divergent),  # copies out of the replica, changes nothing in it
    tp.Adopt: Row(_Q, _not_a_primary),  # a primary accepting moves answers it before the table (``_arrivals``)
    tp.Generation: Row(_H, _generation),
    tp.Snapshot: Row(_S, replica_snapshots.take),
    tp.RetireSnapshot: Row(_S, replica_snapshots.retire),
}
