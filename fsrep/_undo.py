"""A replica's undo log: while a resync writes to a replica, what each
change overwrites or removes is kept, so that the replica can be rolled
back to its state when the resync began — crash consistent, equal to the
primary at some earlier moment — should the primary be lost before the
resync completes. A resync target is never left half-synced.

How this works: the primary sends ResyncBegin before the first change of
a resync. The replica's data is made durable (``Tree.sync``), then the log
opens with that position as its base (``STORE/.fsrep/undo/<id>/log``, a
``tracking.JournaledState``). From then on each change (``before``, from
``Replica.before_apply``) first appends a record of how to undo it, made
durable with its batch of frames, before anything can make the change
durable (write-ahead; see the caveats):

- a file's data: the old bytes of the regions it is about to overwrite
  (once per region: a region saved already needs nothing), kept in
  ``data``, and its old size and attributes (once per file);
- attributes and extended attributes: their old values (once per entry);
- an entry about to be removed or replaced: it is renamed aside into
  ``aside/`` (no data copied; a placeholder takes its name for the change
  to remove), and a Purge puts every entry of the root aside — after it
  nothing more needs recording, as all the tree holds is new;
- an entry made: its name (undone by removing it);
- a rename: the two names; the directories an entry change touches: their
  old times (once per directory).

Files made since the log opened need no record of their data, nor entries
made in directories made since (an untarred tree costs one record). The
Generation that ends the resync marks the log ``ended``; the next
checkpoint that has made the data up to it durable releases the log.
``rollback`` applies the records newest first and returns the base
position; it is idempotent: a rollback cut short is run again from the
start and reaches the same state.

Bound: ``limit`` bytes of saved data and MAX_RECORDS records. When a change
would exceed it, ``before`` raises EDQUOT: the change is refused (Nacked),
the log kept, and the resync stops there until the operator raises the
bound (``fsrep serve --undo-limit``) — the log is never dropped while the
replica depends on it.

Caveats:
- Holes overwritten are restored as zeros (same content, not sparse).
- Records are made durable once per batch of frames (``flush``, before
  the batch's Ack; before an Fsync; in each checkpoint): a change applied
  in a batch may reach the disk before its record only if the filesystem
  writes it back within that batch, which no Linux filesystem's writeback
  does (it waits seconds); a secondary host that crashes then, with the
  primary lost too, may roll back less than it changed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tracking
import transport as tp

from ._apply import remove_tree
from ._config import Reserve
from ._sparse import data_segments, proc_path, punch, pwrite_all, renameat2
from ._tree import Tree

log = logging.getLogger(__name__)
UNDO_KIND = "fsrep-undo"
UNDO_LIMIT = 4 << 30  # bytes of old data a log may keep, by default
MAX_RECORDS = 1_000_000  # records of one log: what a rollback reads into memory
MAX_NEW = 1_000_000  # inodes remembered as made since the log opened (their changes need no record)
MAX_XATTRS = 64 * 1024  # bytes of an entry's extended attributes kept (more: the change is refused)
REGION = tracking.REGION_SIZE
STAGE_CHUNK = 1024 * 1024  # old bytes copied to the log a piece at a time: a large punch never fills memory


class UndoFull(OSError):
    """Raised when recording a change would exceed the log's bound."""


@dataclass(slots=True)
class _Touched:
    """What the log holds already, so a second change records nothing."""

    regions: dict[int, tracking.RegionSet] = field(default_factory=dict)  # ino -> regions saved
    attrs: set[int] = field(default_factory=set)  # inodes whose attributes are saved
    xattrs: set[int] = field(default_factory=set)
    times: set[int] = field(default_factory=set)  # directories whose times are saved
    new: set[int] = field(default_factory=set)  # inodes made since the log opened
    unresolved: list[bytes] = field(default_factory=list)  # entries just made: their inodes, at the next change
    purged: bool = False


class UndoLog:
    """The undo log of one replica (open or not)."""

    def __init__(self, directory: Path, tree: Tree, limit: int = UNDO_LIMIT, space: Reserve | None = None) -> None:
        self.dir = directory
        self.space = space  # the store's reserve: a resync that frees space can start on a full disk
        self.tree = tree
        self.limit = limit
        self._journal = tracking.JournaledState(directory / "log", UNDO_KIND)
        self._aside = directory / "aside"
        self._data = directory / "data"
        self._touched = _Touched()
        self.base: dict[str, Any] | None = None  # the position the log rolls back to; None: not open
        self.ended: int | None = None  # the seq of the Generation that ended the resync
        self.data_bytes = 0
        self.records = 0
        self._asides = 0
        self._pending: list[tuple[str, int, tracking.RegionRange | None]] = []  # what the next record holds
        self._staged = 0  # old bytes in the data file for the record being made
        self._appended = self._synced = 0  # records appended, and of those made durable
        self._fd: int | None = None  # the data file, open while the log is
        self._lock = threading.Lock()  # released from a checkpoint's thread, begun from the applying one

    # --- opening and releasing ---------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.base is not None

    def load(self) -> bool:
        """Take up the log a previous run left (whether one is open)."""
        try:
            base, records = self._journal.load()
        except tracking.StateMissing:
            return False
        self.base = base
        self.records = len(records)
        self.ended = next((int(r["ended"]) for r in reversed(records) if "ended" in r), None)
        self.data_bytes = self._data.stat().st_size if self._data.exists() else 0
        self._asides = len(os.listdir(self._aside)) if self._aside.is_dir() else 0
        self._touched.purged = any(step[0] == "purged" for r in records for step in r.get("steps", []))
        return True

    def begin(self, position: dict[str, Any]) -> None:
        """Open the log at *position* (the replica's, its data durable now)."""
        with self._lock:
            self._close()
            shutil.rmtree(self.dir, ignore_errors=True)

            def start() -> None:
                self._aside.mkdir(parents=True, exist_ok=True)
                self._data.touch()
                self._journal.rewrite(position)
            self._durably(start)
            self.base, self.ended, self.data_bytes, self.records, self._asides = position, None, 0, 0, 0
            self._touched = _Touched()

    def end(self, seq: int) -> None:
        """The resync ended at *seq*: the log goes once that is durable."""
        if self.open and self.ended is None:
            self.flush()
            self._append({"ended": seq})
            self.ended = seq

    def release(self) -> None:
        """Forget the log: the replica no longer depends on it."""
        with self._lock:
            self._close()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.base = self.ended = None
            self._touched = _Touched()
        if self.space is not None:
            self.space.hold()  # given up when the disk was full, perhaps

    def release_upto(self, durable_seq: int) -> None:
        """Release the log if the resync it kept ended at or before
        *durable_seq* (everything up to which is on disk now). From any
        thread."""
        with self._lock:
            ended = self.ended
        if ended is not None and ended <= durable_seq:
            self.release()
            log.info("the undo log of %s is released: the resync it kept ended at seq %d, now durable",
                     self.tree.root, ended)

    # --- recording -----------------------------------------------------------------------

    def before(self, op: tp.Operation) -> None:
        """Record how to undo *op*, durably, before it is applied.

        Raises:
            UndoFull: the log's bound would be exceeded (EDQUOT).
            OSError: the record could not be written.
        """
        touched = self._touched
        if not self.open or self.ended is not None:
            return  # no resync under way
        if op.BARRIER:
            self.flush()  # the change makes what came before durable: its undo first
        if touched.purged:
            return  # all the tree holds is new
        self._resolve()
        steps: list[list[Any]] = []
        record = _RECORDERS.get(type(op))
        if record is None:
            return
        try:
            record(self, op, steps)
            if steps:
                self._write(steps)
        finally:
            self._pending.clear()  # what a record that was not written holds is not held
            self._staged = 0  # old bytes staged for a record that was not written are written over

    def _write(self, steps: list[list[Any]]) -> None:
        """Append the record of *steps*, durably, with the old bytes staged
        for it in the data file."""
        if self.records >= MAX_RECORDS:
            self._full()
        self._append({"steps": steps}, durable=False)  # made durable with the batch (``flush``)
        self.data_bytes += self._staged
        self._staged = 0
        touched = self._touched
        for kind, ino, run in self._pending:
            if kind == "data":
                assert run is not None
                touched.regions.setdefault(ino, tracking.RegionSet()).add(run)
            elif kind == "purged":
                touched.purged = True
            else:
                getattr(touched, kind).add(ino)
        self._pending.clear()

    def _full(self) -> None:
        raise UndoFull(errno.EDQUOT, f"the undo log is full ({self.data_bytes} bytes of old data, {self.records} "
                                     f"records; the bound is {self.limit} bytes): the resync waits until the bound "
                                     f"is raised with 'fsrep serve --undo-limit'")

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _data_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._data, os.O_RDWR | os.O_CLOEXEC)
        return self._fd

    def _stage(self, src: int, offset: int, length: int) -> tuple[int, int]:
        """Copy up to *length* old bytes of *src* at *offset* (fewer at its
        end) to the data file, after what is kept; where they are there, and
        how many."""
        if self.data_bytes + self._staged + length > self.limit:
            self._full()
        at = self.data_bytes + self._staged
        done = 0
        while done < length:
            chunk = os.pread(src, min(STAGE_CHUNK, length - done), offset + done)
            if not chunk:
                break
            self._durably(lambda chunk=chunk, where=at + done: pwrite_all(self._data_fd(), chunk, where))
            done += len(chunk)
        self._staged += done
        return at, done

    def _append(self, record: dict[str, Any], *, durable: bool = True) -> None:
        self._durably(lambda: self._journal.append(record, durable=durable))
        self.records += 1
        self._appended += 1
        if durable:
            self._synced = self._appended

    def flush(self) -> None:
        """Make every record so far durable (the old bytes, then the
        journal): before a change can reach the disk — at the end of each
        batch of frames, before an Fsync, in each checkpoint before the
        data is synced. From any thread.

        Raises:
            OSError: it could not; the changes after it must not be applied.
        """
        appended = self._appended
        if appended == self._synced or not self.open:
            return
        with self._lock:
            if self._fd is not None:
                os.fdatasync(self._fd)
            self._journal.sync()
        self._synced = max(self._synced, appended)

    def _durably(self, write: Callable[[], object]) -> None:
        if self.space is None:
            write()
        else:
            self.space.durably(write)

    def _resolve(self) -> None:
        """The inodes of the entries made by the changes before this one."""
        for path in self._touched.unresolved:
            if len(self._touched.new) >= MAX_NEW:
                break  # what is made after costs records like anything old: bounded by MAX_RECORDS and limit
            try:
                self._touched.new.add(self.tree.lstat(path).st_ino)
            except OSError:
                pass
        self._touched.unresolved.clear()

    def _lstat(self, path: bytes) -> os.stat_result | None:
        try:
            return self.tree.lstat(path)
        except OSError:
            return None

    def data(self, path: bytes, runs: list[tuple[int, int]], steps: list[list[Any]], *,
             size: int | None = None) -> None:
        """Before a change of file *path*'s data in *runs* (offset,
        length), or of its size to *size*: where it was data or holes there
        (the regions not kept already), the old bytes of its data, its old
        size and attributes. Holes cost nothing: a punch of a petabyte of
        them keeps only the data it finds."""
        st = self._lstat(path)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_ino in self._touched.new:
            return
        self.attrs(path, st, steps)
        spans = [(offset, min(offset + length, st.st_size)) for offset, length in runs]
        if size is not None and size < st.st_size:
            spans.append((size, st.st_size))
        saved = self._touched.regions.get(st.st_ino)
        todo = [piece for low, high in spans if high > low for piece in _not_kept(saved, low, high)]
        pieces: list[list[int]] = []
        if todo:
            with self.tree.entry(path) as entry:
                fd = os.open(proc_path(entry), os.O_RDONLY | os.O_CLOEXEC)
            try:
                for low, high in todo:
                    for first, end in data_segments(fd, low, high):
                        first, end = first // REGION * REGION, min(high, -(-end // REGION) * REGION)
                        at, copied = self._stage(fd, first, end - first)
                        pieces.append([first, copied, at])
                        self._pending.append(("data", st.st_ino, tracking.regions_for(first, end - first)))
            finally:
                os.close(fd)
        steps.append(["data", path.hex(), st.st_size, [[low, high - low] for low, high in todo], pieces])

    def attrs(self, path: bytes, st: os.stat_result | None, steps: list[list[Any]]) -> None:
        """Before a change of *path*'s attributes (once per entry)."""
        if st is None:
            st = self._lstat(path)
        if st is None or st.st_ino in self._touched.attrs or st.st_ino in self._touched.new:
            return
        self._pending.append(("attrs", st.st_ino, None))
        steps.append(["attrs", path.hex(), st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns])

    def xattrs(self, path: bytes, steps: list[list[Any]]) -> None:
        """Before a change of *path*'s extended attributes (once per entry)."""
        st = self._lstat(path)
        if st is None or st.st_ino in self._touched.xattrs or st.st_ino in self._touched.new:
            return
        self.attrs(path, st, steps)
        kept, size = {}, 0
        for name in self.tree.listxattr(path):
            value = self.tree.getxattr(path, name)
            size += len(name) + len(value)
            kept[name.hex()] = value.hex()
        if size > MAX_XATTRS:
            raise UndoFull(errno.EDQUOT, f"{path!r} has {size} bytes of extended attributes, more than the undo "
                                         f"log keeps ({MAX_XATTRS})")
        self._pending.append(("xattrs", st.st_ino, None))
        steps.append(["xattrs", path.hex(), kept])

    def times(self, path: bytes, steps: list[list[Any]]) -> None:
        """Before an entry of directory *path* changes: its old times."""
        st = self._lstat(path)
        if st is None or st.st_ino in self._touched.times or st.st_ino in self._touched.new:
            return
        self._pending.append(("times", st.st_ino, None))
        steps.append(["times", path.hex(), st.st_atime_ns, st.st_mtime_ns])

    def made(self, path: bytes, steps: list[list[Any]], *, new_inode: bool = True) -> None:
        """Before an entry is made at *path* (in a directory made since
        the log opened, nothing: undoing that removes all below it); a hard
        link is a new name of an old inode, whose changes are still kept."""
        if new_inode:
            self._touched.unresolved.append(path)
        parent = self._lstat(_parent(path))
        if parent is not None and parent.st_ino in self._touched.new:
            return
        self.times(_parent(path), steps)
        steps.append(["made", path.hex()])

    def aside(self, path: bytes, steps: list[list[Any]], *, placeholder: bool) -> None:
        """Before the entry at *path* is removed: rename it aside (its
        data, its other names, all below it kept), leaving an empty
        placeholder of its kind for the change to remove."""
        st = self._lstat(path)
        if st is None:
            return
        self.times(_parent(path), steps)
        name = str(self._asides)
        steps.append(["aside", path.hex(), name])
        self._write(steps)  # recorded before the rename: a rollback puts it back
        steps.clear()
        self._asides += 1
        self.tree.forget_all()
        d, last = self.tree.at(path)
        aside = os.open(self._aside, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.rename(last, name, src_dir_fd=d, dst_dir_fd=aside)
        finally:
            os.close(aside)
        if placeholder:
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(last, 0o700, dir_fd=d)
            else:
                os.close(os.open(last, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=d))

    def purge(self, steps: list[list[Any]]) -> None:
        """Before the replica root is emptied: every entry goes aside; all
        the tree holds after is new."""
        self.times(b"", steps)
        for name in self.tree.listdir(b""):
            self.aside(name, steps, placeholder=False)
        steps.append(["purged"])
        self._pending.append(("purged", 0, None))

    # --- rolling back ---------------------------------------------------------------------

    def rollback(self) -> dict[str, Any]:
        """Undo every change recorded, newest first; the position the
        replica is back at. Run again after a crash, it reaches the same.

        Raises:
            OSError, StateError: the log cannot be read or applied.
        """
        base, records = self._journal.load()
        start = min([len(records), *(int(r["undone"]) for r in records if "undone" in r)])
        self.tree.forget_all()
        data = os.open(self._data, os.O_RDONLY | os.O_CLOEXEC) if self._data.exists() else -1
        try:
            for index in range(start - 1, -1, -1):
                steps = records[index].get("steps", [])
                for step in reversed(steps):
                    _undo(self, step, data)
                    self.tree.forget_all()
                if any(step[0] in _BRINGS_BACK for step in steps):
                    # What a newer record's undo would remove may be back now: never undo those again.
                    self.tree.sync()
                    self._journal.append({"undone": index})
        finally:
            if data >= 0:
                os.close(data)
        self.tree.sync()
        return base

    def put_back(self, name: str, path: bytes) -> None:
        aside = os.open(self._aside, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.stat(name, dir_fd=aside, follow_symlinks=False)
            except FileNotFoundError:
                return  # put back already (a rollback run again)
            _clear(self.tree, path)
            d, last = self.tree.at(path)
            os.rename(name, last, src_dir_fd=aside, dst_dir_fd=d)
        finally:
            os.close(aside)


_BRINGS_BACK = ("aside", "renamed", "purged")  # steps whose undo is not idempotent with a newer one's undone again


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _not_kept(saved: tracking.RegionSet | None, low: int, high: int) -> list[tuple[int, int]]:
    """The byte spans of [low, high), widened to whole regions, whose
    regions *saved* does not hold."""
    first, stop = low // REGION, -(-high // REGION)
    spans, at = [], first
    if saved is not None and saved.overlaps(tracking.RegionRange(first, stop - first)):
        for kept in saved.ranges(first):
            if kept.first >= stop:
                break
            if kept.first > at:
                spans.append((at * REGION, kept.first * REGION))
            at = max(at, kept.stop)
    if at < stop:
        spans.append((at * REGION, stop * REGION))
    return spans


def _clear(tree: Tree, path: bytes) -> None:
    """Nothing at *path* afterwards (a whole subtree if a directory)."""
    tree.forget_all()  # a descriptor cached for what goes, or below it, must not outlive it
    try:
        d, name = tree.at(path)
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return  # nothing there, nor a directory to hold it
    if stat.S_ISDIR(st.st_mode):
        remove_tree(d, name)
    else:
        os.unlink(name, dir_fd=d)


def _undo(undo: UndoLog, step: list[Any], data: int) -> None:
    kind, tree = step[0], undo.tree
    if kind == "purged":
        for name in tree.listdir(b""):
            _clear(tree, name)
        return
    path = bytes.fromhex(step[1])
    if kind == "data":
        size, spans, pieces = int(step[2]), step[3], step[4]
        fd = tree.writable(path)
        for offset, length in spans:  # what was a hole is one again
            punch(fd, int(offset), int(length))
        for offset, length, at in pieces:
            done = 0
            while done < int(length):
                chunk = os.pread(data, min(STAGE_CHUNK, int(length) - done), int(at) + done)
                if not chunk:
                    raise tracking.StateCorrupt(f"undo log {undo.dir}: its data ends early")
                pwrite_all(fd, chunk, int(offset) + done)
                done += len(chunk)
        os.ftruncate(fd, size)
    elif kind == "attrs":
        mode, uid, gid, atime, mtime = (int(v) for v in step[2:7])
        with tree.entry(path) as fd:
            where = proc_path(fd)
            os.chown(where, uid, gid)
            if not stat.S_ISLNK(mode):
                os.chmod(where, stat.S_IMODE(mode))
            os.utime(where, ns=(atime, mtime))
    elif kind == "xattrs":
        kept = {bytes.fromhex(k): bytes.fromhex(v) for k, v in step[2].items()}
        for name in tree.listxattr(path):
            if name not in kept:
                with tree.entry(path) as fd:
                    os.removexattr(proc_path(fd), name)
        for name, value in kept.items():
            with tree.entry(path) as fd:
                os.setxattr(proc_path(fd), name, value)
    elif kind == "times":
        with tree.entry(path) as fd:
            os.utime(proc_path(fd), ns=(int(step[2]), int(step[3])))
    elif kind == "made":
        _clear(tree, path)
    elif kind == "aside":
        undo.put_back(str(step[2]), path)
    elif kind == "renamed":
        new, flags, moved = bytes.fromhex(step[2]), int(step[3]), int(step[4])
        at_new = undo._lstat(new)
        if at_new is None or at_new.st_ino != moved:
            return  # undone already: what was renamed is no longer at the new name
        with tree.held_parent(new) as (src_dir, src):
            dst_dir, dst = tree.at(path)
            if flags & tp.RENAME_EXCHANGE:
                renameat2(src_dir, src, dst_dir, dst, tp.RENAME_EXCHANGE)
            else:
                os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    else:
        raise tracking.StateCorrupt(f"undo log {undo.dir}: unknown step {kind!r}")


# --- what each change records ----------------------------------------------------------------


def _write(undo: UndoLog, op: tp.Write, steps: list[list[Any]]) -> None:
    undo.data(op.path, [(op.offset, len(op.data))], steps)


def _write_runs(undo: UndoLog, op: tp.WriteRuns, steps: list[list[Any]]) -> None:
    undo.data(op.path, [(offset, len(piece)) for offset, piece in op.pieces()], steps)


def _punch(undo: UndoLog, op: tp.Punch, steps: list[list[Any]]) -> None:
    undo.data(op.path, list(op.run_list()), steps)


def _setattr(undo: UndoLog, op: tp.SetAttr, steps: list[list[Any]]) -> None:
    if op.fields & tp.ATTR_SIZE:
        undo.data(op.path, [], steps, size=op.size)
    undo.attrs(op.path, None, steps)


def _xattr(undo: UndoLog, op: tp.SetXattr | tp.RemoveXattr | tp.KeepXattrs, steps: list[list[Any]]) -> None:
    undo.xattrs(op.path, steps)


def _made(undo: UndoLog, op: tp.Create | tp.Clone | tp.MkNod | tp.MkDir | tp.Symlink, steps: list[list[Any]]) -> None:
    undo.made(op.path, steps)


def _link(undo: UndoLog, op: tp.Link, steps: list[list[Any]]) -> None:
    undo.made(op.new, steps, new_inode=False)


def _removed(undo: UndoLog, op: tp.Unlink | tp.RmDir, steps: list[list[Any]]) -> None:
    undo.aside(op.path, steps, placeholder=True)


def _remove(undo: UndoLog, op: tp.Remove, steps: list[list[Any]]) -> None:
    undo.aside(op.path, steps, placeholder=False)


def _rename(undo: UndoLog, op: tp.Rename, steps: list[list[Any]]) -> None:
    undo.times(_parent(op.old), steps)
    undo.times(_parent(op.new), steps)
    moved, replaced = undo._lstat(op.old), undo._lstat(op.new)
    if moved is not None and replaced is not None and moved.st_ino == replaced.st_ino:
        return  # two names of one file: the rename changes nothing
    if not op.flags & (tp.RENAME_EXCHANGE | tp.RENAME_NOREPLACE) and replaced is not None:
        undo.aside(op.new, steps, placeholder=False)  # what the rename replaces
    steps.append(["renamed", op.old.hex(), op.new.hex(), op.flags, moved.st_ino if moved is not None else -1])


def _purge(undo: UndoLog, op: tp.Purge, steps: list[list[Any]]) -> None:
    undo.purge(steps)


_RECORDERS: dict[type[tp.Operation], Any] = {
    tp.Write: _write, tp.WriteRuns: _write_runs, tp.Punch: _punch, tp.SetAttr: _setattr,
    tp.SetXattr: _xattr, tp.RemoveXattr: _xattr, tp.KeepXattrs: _xattr,
    tp.Create: _made, tp.Clone: _made, tp.MkNod: _made, tp.MkDir: _made, tp.Symlink: _made, tp.Link: _link,
    tp.Rename: _rename, tp.Unlink: _removed, tp.RmDir: _removed, tp.Remove: _remove, tp.Purge: _purge,
}
