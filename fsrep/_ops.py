"""The FUSE operations: a passthrough over the primary store whose every
mutation goes through the splitter.

How this works: reads are served from the store. Each mutating handler
builds the replicated frame from the inode's current path, and hands the
splitter a plain function that applies the change locally and returns that
frame, with the marks the change would leave dirty; then it awaits the
secondary's ack. Every mutation takes one of two paths: replicated
(``_replicate``), or — for an open file with no known name — local
(``_unlinked``). Handlers stay thin: path and inode bookkeeping live in
``InodeTable``, the marks of each mutation in ``Effects``, open files and
directories in ``Handles``, confinement in ``Tree``, which consistency
group a path belongs to in ``Groups``, ordering in ``Relationship``, error
mapping in ``fuse_errors``.

Paths: ``self.tree`` is the whole store and serves reads by mount path; a
mutation is applied through its group's tree, and its frame and dirty marks
carry the path relative to that group's root.

Caveats:
- Changes to a file unlinked while open are local only (the replica no
  longer has the file), and wait for no group — unless it still has a
  name this mount never looked up (another hard link): then they are kept
  local and dirty under the file's inode, the group goes OutOfSync, and a
  quick resync finds the file by inode and copies them (``strict``: EIO).
- A write of more than ``FRAME_FIRST`` bytes goes in pieces of that size,
  each but the last handed to the socket before it is applied here, so
  both hosts write at the same time (see ``Relationship.split``). The last
  is applied here first: its frame carries the mtime the write gave the
  file, known only once this side wrote it.
- Times: every frame carries the mtimes the change gave the store — the
  file's after a write or truncate (one fstat), a new entry's and its
  directory's, both directories' of a rename (``Tree.stamped``) — and the
  secondary sets them, so the replica's mtimes are the primary's. chmod,
  chown, link (of the target) and xattrs change only the ctime, which
  cannot be set.
- An open directory is a descriptor of the store's and a cursor into it
  (``DirStream``), never a copy of its listing: as an open file, it costs
  one descriptor whatever its size.
- The daemon runs as root with ``default_permissions``: the kernel checks
  permissions; new entries are chowned to the caller, with the parent's group
  when the parent is setgid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

import transport as tp
from tracking import LOCAL_SEQ, Marks
from tracking import REGION_SIZE as REGION

from ._boundary import fuse_errors, requests_running
from ._clone_aside import ASIDE_AT, AsideCopy, copy_aside
from ._effects import Effects, Location
from ._groups import Group, Groups
from ._handles import Handles, removed
from ._inodes import ROOT, InodeTable
from ._sparse import clone_seconds, pwrite_all
from ._tree import RESERVED, Tree

TIMEOUT = 1.0
FRAME_FIRST = 128 * 1024  # larger writes go in pieces of this size, sent before they are applied here (but the last)
CAPABILITY = b"security.capability"
SYNC_INLINE_BYTES = 1024 * 1024  # an fsync after no more writes than this runs on the event loop when alone
NO_CAPS_LIMIT = 100_000  # inodes remembered without capabilities; forgotten all at once past this
NAMELESS = ("a file was changed through a name that was removed while another of its hard links, not yet seen by "
            "this mount, remains")
_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_NOCTTY | getattr(os, "O_DIRECT", 0)

_STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                   "f_namemax")
_BY_FILE_HANDLE = frozenset({"read", "write", "fsync", "release"})
_BY_DIR_HANDLE = frozenset({"readdir", "releasedir", "fsyncdir"})

T = TypeVar("T")
Apply = Callable[[int | None], tp.Operation | None]


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers for one mount and its consistency groups."""

    def __init__(self, tree: Tree, groups: Groups, *, writeback_cache: bool = False) -> None:
        super().__init__()
        self.enable_writeback_cache = writeback_cache
        self.tree = tree
        self.groups = groups
        root = os.stat(tree.root_fd)
        self.inodes = InodeTable(root.st_ino, root.st_dev)
        self.effects = Effects(self.inodes, groups, tree)
        self.handles = Handles(self.inodes, self.effects)
        # Inodes known to have no file capabilities: the kernel asks before
        # every write, and the answer changes only through setxattr here.
        self._no_caps: set[int] = set()

    # --- helpers -------------------------------------------------------------------

    def internal_fault(self, handler: str, args: tuple[Any, ...], exc: Exception) -> None:
        """Called by the error boundary when a bug failed *handler*: the
        group it touched (every group, when that cannot be told) is marked
        for a checksum resync."""
        for group in self._groups_of(handler, args):
            group.rel.internal_fault(f"internal error in {handler}: {exc!r}")

    def _groups_of(self, handler: str, args: tuple[Any, ...]) -> list[Group]:
        ino = args[0] if args and isinstance(args[0], int) else None
        if ino is not None and (handler in _BY_FILE_HANDLE or handler in _BY_DIR_HANDLE):
            ino = self.handles.ino_of(ino, directory=handler in _BY_DIR_HANDLE)
        where = self.effects.locate(ino) if ino is not None and ino in self.inodes else None
        return list(self.groups.all) if where is None else [where.group]

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        return _attributes(st, self.inodes.fuse_ino(st.st_ino, st.st_dev))

    def _where(self, ino: int) -> Location:
        """Where *ino* is; ENOENT once it was unlinked."""
        where = self.effects.locate(ino)
        if where is None:
            raise removed()
        return where

    def _reserved(self, parent: int, name: bytes) -> bool:
        """Whether *name* in *parent* is ``.fsrep`` at the root of the mount
        or of a group (where the group's replica keeps its state)."""
        return name == RESERVED and (parent == ROOT or self.inodes.path(parent) in self.groups.roots)

    def _child(self, parent: int, name: bytes) -> bytes:
        if self._reserved(parent, name):
            raise OSError(errno.EPERM, ".fsrep is reserved")
        return self.inodes.child_path(parent, name)

    def _stat_ino(self, ino: int) -> os.stat_result:
        return self._read(ino, self.tree.lstat, os.fstat)

    def _read(self, ino: int, by_path: Callable[[bytes], T], by_fd: Callable[[int], T]) -> T:
        """Read something of *ino*: through its path, or once it has no
        known name through the descriptor kept of it."""
        path = self.inodes.path(ino)
        if path is not None:
            return by_path(path)
        return by_fd(self.handles.unlinked_fd(ino))

    def _entry(self, parent: int, name: bytes, path: bytes) -> pyfuse3.EntryAttributes:
        st = self.tree.lstat(path)
        self.inodes.remember(st.st_ino, parent, name, st.st_dev)
        return self._attrs(st)

    # --- the mutation patterns: replicated, or local to a file with no known name ----

    @staticmethod
    async def _replicate(group: Group, apply: Apply, marks: Marks) -> None:
        rel, moves = group.rel, group.rel.moves
        await rel.admit()
        if rel.moves != moves:  # the group's data moved to another file system meanwhile
            marks = rel.remarked(marks)
        await rel.wait(rel.split(apply, marks))

    async def _replicate_frame(self, group: Group, frame: Callable[[int], tp.Operation], marks: Marks) -> None:
        """A change the Tree applies on both sides alike: ``frame(seq)``."""
        await self._replicate(group, _apply_frame(group, frame), marks)

    async def _change_file(self, ino: int, frame: Callable[[int, bytes], tp.Operation],
                           marks: Callable[[Location], Marks], unlinked: Callable[[int], object]) -> None:
        """A change to one file: ``frame(seq, path)`` applied on both sides
        with the *marks* of where the file is — or, once it has no known
        name, ``unlinked(fd)`` on a descriptor of it (see ``_unlinked``)."""
        where = self.effects.locate(ino)
        if where is None:
            self._unlinked(ino, lambda: unlinked(self.handles.unlinked_fd(ino)))
            return
        group = where.group
        await self._replicate_frame(group, lambda seq: frame(seq, where.path), marks(where))

    def _unlinked(self, ino: int, change: Callable[[], T], data: tuple[int, int] | None = None) -> T:
        """A change to an open file with no known name: local only — and,
        when it still has a name this mount never looked up, kept dirty
        under its inode (with the (offset, length) of *data* written) for a
        resync to find it, since no frame can carry a name not known here."""
        group = self.handles.nameless(ino)
        if group is None:  # no name left: the replica no longer has the file
            return change()
        done: list[T] = []
        group.rel.keep_local(lambda seq: done.append(change()), self.effects.nameless(ino, data), NAMELESS)
        return done[0]

    async def _make(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext, frame: Callable[..., tp.Operation],
                    *, mode: int | None = None, **fields: Any) -> pyfuse3.EntryAttributes:
        """Shared body of mkdir, mknod, symlink: a new entry owned by the
        caller (with *mode*, when its frame has one), made on both sides."""
        path = self._child(parent, name)
        group, rel = self.groups.claim(path, errno.EEXIST)
        uid, gid, mode_made = _owner(self.tree, path, ctx, stat.S_IFLNK if mode is None else mode & ~ctx.umask)
        if mode is not None:
            fields["mode"] = mode_made
        await self._replicate_frame(group, lambda seq: frame(seq=seq, path=rel, uid=uid, gid=gid, **fields),
                                    self.effects.in_dirs(parent))
        return self._entry(parent, name, path)

    # --- lookups and attributes -----------------------------------------------------

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._reserved(parent_inode, name):
            raise OSError(errno.ENOENT, "hidden")
        if name == b".":
            return self._attrs(self._stat_ino(parent_inode))
        if name == b"..":
            raise OSError(errno.ENOENT, "no parent lookups")
        return self._entry(parent_inode, name, self.inodes.child_path(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attrs(self._stat_ino(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        bits, kw = _setattr_fields(attr, fields, lambda: self._stat_ino(inode))
        if bits:
            def marks(where: Location) -> Marks:
                if not bits & tp.ATTR_SIZE:
                    return self.effects.meta(where)
                return self.effects.resize(where, self.tree.lstat(where.mount_path).st_size, kw["size"])

            await self._change_file(inode, lambda seq, path: tp.SetAttr(seq=seq, path=path, fields=bits, **kw),
                                    marks, lambda fd: _set_attributes(fd, bits, kw))
        return self._attrs(self._stat_ino(inode))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(self._where(inode).mount_path)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.tree.root_fd)
        data = pyfuse3.StatvfsData()
        for name in _STATVFS_FIELDS:
            setattr(data, name, getattr(sv, name))
        return data

    # --- namespace ------------------------------------------------------------------

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx, tp.MkDir, mode=stat.S_IFDIR | mode)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx, tp.MkNod, mode=mode, rdev=rdev)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, ctx, tp.Symlink, target=target)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        target = self._where(inode)
        new = self._child(new_parent_inode, new_name)
        self.groups.claim(new, errno.EEXIST)
        group, rel_target, rel_new = self.groups.same(target.mount_path, new)
        await self._replicate_frame(group, lambda seq: tp.Link(seq=seq, target=rel_target, new=rel_new),
                                    self.effects.link(target, new_parent_inode))
        return self._entry(new_parent_inode, new_name, new)

    async def clone(self, inode: int, new_parent_inode: int, new_name: bytes) -> tuple[str, int, bool]:
        """``fsrep clone``, as the kernel would call it: file *inode* copied
        to *new_name* in *new_parent_inode*, as one operation: each side
        makes its own copy (``_apply._clone``), so no data crosses the link.
        The copy inherits what of the source the replica lacks (its dirty
        regions). Returns the group's id, the bytes cloned, and whether the
        local copy was made while replicating (else it is kept dirty and
        a resync sends it).

        Raises:
            OtherGroup: *new_name* is in another group than the source
                (from ``Groups.same``).
            OSError: EEXIST; EINVAL for a source that is not a regular
                file; what the copy met.
        """
        source = self._where(inode)
        new = self._child(new_parent_inode, new_name)
        self.groups.claim(new, errno.EEXIST)
        group, rel_src, rel_new = self.groups.same(source.mount_path, new)
        st = group.tree.lstat(rel_src)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{os.fsdecode(source.mount_path)!r} is not a regular file")
        rel = group.rel
        aside = None
        if st.st_size >= ASIDE_AT:  # copied off the event loop first: the mount serves on meanwhile
            src_fd = group.tree.open_regular(rel_src, os.O_RDONLY)
            aside = await copy_aside(src_fd, group.tree.at(rel_new)[0], st.st_ino, rel.recorder)
        try:
            moves = rel.moves
            await rel.admit()
            if rel.moves != moves and aside is None:  # the group's data moved meanwhile: another inode number
                st = group.tree.lstat(rel_src)
            if aside is not None:  # where both are now: this step replicates the clone
                source = self._where(inode)
                new = self._child(new_parent_inode, new_name)
                self.groups.claim(new, errno.EEXIST)
                now, rel_src, rel_new = self.groups.same(source.mount_path, new)
                st = group.tree.lstat(rel_src) if now is group else st
                if now is not group or st.st_ino != aside.watch.ino:
                    raise OSError(errno.ENOENT, "the source was moved away or replaced while it was copied")
            frame = functools.partial(tp.Clone, src=rel_src, path=rel_new, mode=st.st_mode, uid=st.st_uid,
                                      gid=st.st_gid)
            apply = _apply_frame(group, lambda seq: frame(seq=seq)) if aside is None else \
                _finished_aside(group.tree, aside, frame)
            pending = rel.split(apply, self.effects.in_dirs(new_parent_inode))
        finally:
            if aside is not None:
                aside.close()
        made = group.tree.lstat(rel_new)
        if pending is not None:  # the secondary copies it too, in its stream: its ack may take that long
            pending.grace = clone_seconds(made.st_size)
        parent = self.effects.backing(new_parent_inode)

        def marks_of(spans: list[tuple[int, int]]) -> Marks:
            return Marks(regions=tuple((made.st_ino, rel_new, offset, length) for offset, length in spans),
                         meta=((made.st_ino, rel_new),), parent=parent)

        whole = [(0, max(made.st_size, 1))]
        rel.recorder.record(marks_of(whole), pending.seq if pending is not None else LOCAL_SEQ)  # changed whole
        # What of the source the replica lacks, its copy lacks too; a copy kept local lacks all of it.
        inherited = [(r.first * REGION, r.count * REGION) for r in rel.dirty.ranges(st.st_ino)] \
            if pending is not None else whole
        if inherited:
            rel.ledger.dirty_apply(marks_of(inherited))
        if pending is None:  # a resync replays it as a clone, then compares it by digest
            backups = rel.clone_backups  # keeps what the source holds now (its copy's content), named for it
            backup = backups.keep(group.tree, rel_src, group.tree.lstat(rel_src)) if backups is not None else ""
            rel.dirty.mark_clone(made.st_ino, rel_new, rel_src, backup)
        rel.bytes_cloned += made.st_size
        await rel.wait(pending)
        with contextlib.suppress(OSError):  # a name the kernel looked up before it existed
            pyfuse3.invalidate_entry_async(new_parent_inode, new_name, ignore_enoent=True)
        return rel.record.id, made.st_size, pending is not None

    async def _remove(self, parent_inode: int, name: bytes, frame: Any) -> None:
        path = self._child(parent_inode, name)
        group, rel = self.groups.claim(path, errno.EBUSY)
        ino = self.inodes.lookup_entry(parent_inode, name)
        await self._replicate_frame(group, lambda seq: frame(seq=seq, path=rel), self.effects.in_dirs(parent_inode))
        self.inodes.unlinked(parent_inode, name)
        self.handles.name_removed(ino, group)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, tp.Unlink)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, tp.RmDir)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        group, rel_old, rel_new = self.groups.same(old, new)
        exchange = bool(flags & pyfuse3.RENAME_EXCHANGE)
        wire = (tp.RENAME_NOREPLACE if flags & pyfuse3.RENAME_NOREPLACE else 0) | \
               (tp.RENAME_EXCHANGE if exchange else 0)
        replaced = None if exchange else self.inodes.lookup_entry(parent_inode_new, name_new)
        marks = self.effects.rename((parent_inode_old, parent_inode_new), old, new, exchange=exchange)
        await self._replicate_frame(group, lambda seq: tp.Rename(seq=seq, old=rel_old, new=rel_new, flags=wire), marks)
        if exchange:
            self.inodes.exchanged(parent_inode_old, name_old, parent_inode_new, name_new)
        else:
            self.inodes.renamed(parent_inode_old, name_old, parent_inode_new, name_new)
            self.handles.name_removed(replaced, group)

    # --- files ------------------------------------------------------------------------

    def _opened(self, fd: int, ino: int) -> pyfuse3.FileInfo:
        self.handles.opened(fd, ino)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        where = self._where(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            where.group.rel.refuse_if_moved()
        fd = self.tree.open(where.mount_path, _local_flags(flags))
        info = self._opened(fd, inode)  # a handle before any wait: a move's cutover gives it the copy
        try:
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                await self._replicate(where.group, _emptied(fd, where.path),
                                      self.effects.resize(where, os.fstat(fd).st_size, 0))
        except BaseException:
            self.handles.release(fd)
            raise
        return info

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        group, rel = self.groups.claim(path, errno.EEXIST)
        uid, gid, mode = _owner(self.tree, path, ctx, mode & ~ctx.umask)
        made = tp.Create(seq=0, path=rel, mode=mode, uid=uid, gid=gid)
        opened: list[int] = []
        try:
            await self._replicate(group, _created(group.tree, made, flags, opened), self.effects.in_dirs(parent_inode))
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        st = os.fstat(opened[0])
        ino = self.inodes.remember(st.st_ino, parent_inode, name, st.st_dev)
        self._without_caps(ino)  # a new file has none
        return self._opened(opened[0], ino), self._attrs(st)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles.files[fh]
        handle.unsynced += len(buf)
        where = self.handles.locate(handle)
        if where is None:  # unlinked while open
            return self._unlinked(handle.ino, lambda: os.pwrite(fh, buf, off), data=(off, len(buf)))
        moves = where.group.rel.moves
        await where.group.rel.admit()
        if where.group.rel.moves != moves:  # the group's data moved meanwhile: its inodes have other numbers
            where = self.handles.locate(handle)
            if where is None:
                return self._unlinked(handle.ino, lambda: os.pwrite(fh, buf, off), data=(off, len(buf)))
        if len(buf) <= FRAME_FIRST:  # one frame, sent after it was applied here
            written = [0]
            await where.group.rel.wait(where.group.rel.split(_written_here(fh, off, buf, where.path, written),
                                                             self.effects.write(where, off, len(buf))))
            return written[0]
        return await _write_in_pieces(fh, off, buf, where, self.effects)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles.files[fh]
        unsynced, handle.unsynced = handle.unsynced, 0
        await _barrier(fh, self.handles.locate(handle), self.effects, datasync, unsynced)

    # No flush: every write already waited for its ack, so what close() has
    # seen is applied on both sides and nothing is buffered here. The base
    # class answers ENOSYS, after which the kernel stops sending FLUSH (one
    # request less on every close; it still writes back its own cache first).

    @fuse_errors
    async def release(self, fh: int) -> None:
        self.handles.release(fh)

    # --- directories ---------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fd = self.tree.open(self._where(inode).mount_path, os.O_RDONLY | os.O_DIRECTORY)
        self.handles.opened_dir(fd, inode)
        return fd

    def _listed(self, fh: int, ino: int, name: bytes) -> os.stat_result:
        """The lstat of entry *name* of the open directory *fh* (inode
        *ino*) — of the root a group moved elsewhere is served from, when
        the entry is that group's (here, an empty directory stands in)."""
        if self.tree.grafts and self.inodes.path(ino) is not None:
            path = self.inodes.child_path(ino, name)
            if path in self.tree.grafts:
                return self.tree.lstat(path)
        return os.stat(name, dir_fd=fh, follow_symlinks=False)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries from the kernel's offset on, each with the store's own
        offset after it, so the kernel's next call goes on where this one
        stopped (see ``DirStream``). Attributes come from an lstat of the
        name relative to the open directory: the very directory listed,
        wherever it has been renamed to."""
        handle = self.handles.dirs[fh]
        replied = False
        try:
            for name, after in handle.stream.entries(start_id):
                if name in (b".", b"..") or self._reserved(handle.ino, name):
                    continue
                try:
                    st = self._listed(fh, handle.ino, name)
                except FileNotFoundError:  # removed since it was listed
                    continue
                if not pyfuse3.readdir_reply(token, name, self._attrs(st), after):
                    return
                self.inodes.remember(st.st_ino, handle.ino, name, st.st_dev)
                replied = True
        except OSError:
            if not replied:
                raise
            # The entries already in the reply count as looked up: they go out; the next call, which starts at
            # the entry that failed, reports the error.

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.handles.release_dir(fh)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await _barrier(fh, self._where(self.handles.dirs[fh].ino), self.effects, datasync, 0)

    # --- extended attributes ----------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        caps = name == CAPABILITY
        if caps and inode in self._no_caps:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            return self._read(inode, lambda path: self.tree.getxattr(path, name), lambda fd: os.getxattr(fd, name))
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
        if caps:
            self._without_caps(inode)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    def _without_caps(self, inode: int) -> None:
        if len(self._no_caps) >= NO_CAPS_LIMIT:
            self._no_caps.clear()
        self._no_caps.add(inode)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self._read(inode, self.tree.listxattr, lambda fd: [os.fsencode(n) for n in os.listxattr(fd)])

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name == CAPABILITY:
            self._no_caps.discard(inode)
        await self._change_file(inode, lambda seq, path: tp.SetXattr(seq=seq, path=path, name=name, value=value),
                                self.effects.meta, lambda fd: os.setxattr(fd, name, value))

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        """A missing attribute fails with ENODATA, which is ENOATTR on Linux."""
        await self._change_file(inode, lambda seq, path: tp.RemoveXattr(seq=seq, path=path, name=name),
                                self.effects.meta, lambda fd: os.removexattr(fd, name))


# --- the data path: large writes and barriers ----------------------------------------


async def _write_in_pieces(fh: int, off: int, buf: bytes, where: Location, effects: Effects) -> int:
    """A write of more than FRAME_FIRST bytes, in pieces of that size, each
    a frame of its own. All but the last go to the socket before this side
    writes them: the secondary writes one piece while this side writes the
    next. The last is written here first, so its frame carries the mtime
    that gave the file. All are queued in this one step (no checkpoint), so
    their sequence numbers follow each other.

    Returns:
        The bytes written: fewer (a short write) when a piece failed after
        others were written, which are then on both sides.
    Raises:
        OSError: nothing could be written.
    """
    rel, path = where.group.rel, where.path
    view = memoryview(buf)
    last = (len(buf) - 1) // FRAME_FIRST * FRAME_FIRST
    written = 0
    pending = None
    for start in range(0, last, FRAME_FIRST):
        piece = view[start:start + FRAME_FIRST]

        def apply(seq: int | None, piece: memoryview = piece, at: int = off + start) -> tp.Operation:
            pwrite_all(fh, piece, at)
            return tp.Write(seq=seq or 0, path=path, offset=at, data=piece)

        def frame(seq: int, piece: memoryview = piece, at: int = off + start) -> tp.Operation:
            return tp.Write(seq=seq, path=path, offset=at, data=piece)

        try:
            pending = rel.split(apply, effects.write(where, off + start, len(piece)), frame_first=frame) or pending
        except OSError:
            if not written:
                raise
            break  # a short write: what was written is on both sides
        written += len(piece)
    else:
        tail = [0]
        with contextlib.suppress(OSError):  # raised only when none of the tail was written: a short write
            pending = rel.split(_written_here(fh, off + last, view[last:], path, tail),
                                effects.write(where, off + last, len(buf) - last)) or pending
        written += tail[0]
    await rel.wait(pending)
    return written  # O_SYNC and O_DSYNC: the kernel follows each write with an fsync request


async def _barrier(fd: int, where: Location | None, effects: Effects, datasync: bool, unsynced: int) -> None:
    """A barrier: durable locally and on the secondary before returning
    (the data only with *datasync*, as fdatasync: no journal commit for
    an overwrite that changes no size); local only with no *where*."""
    sync = os.fdatasync if datasync else os.fsync
    if where is not None:
        path, rel = where.path, where.group.rel
        moves = rel.moves
        await rel.admit()
    if where is not None and where.group.rel.record.moved_to:
        await where.group.rel.let_go.wait()  # every write acknowledged here is durable on the secondary
        where = None  # a flush here is all that is left
    if where is not None:
        marks = effects.barrier(where) if rel.moves == moves else rel.remarked(effects.barrier(where))
        pending = rel.split(lambda seq: tp.Fsync(seq=seq or 0, path=path, datasync=int(datasync)), marks)
    if unsynced <= SYNC_INLINE_BYTES and requests_running() <= 1:
        # Nothing else is under way and little is to be flushed (a database's commit): here, since the
        # hand-off to a thread and back (about 0.25 ms) would cost more than the flush stalls.
        sync(fd)
        await trio.lowlevel.checkpoint()
    else:
        await trio.to_thread.run_sync(sync, fd)
    if where is not None:
        await where.group.rel.wait(pending)


# --- apply functions: the local change, and the frame it sends ------------------------


def _apply_frame(group: Group, op_of_seq: Callable[[int], tp.Operation]) -> Apply:
    """An apply function for frames the Tree applies on both sides alike;
    the frame sent carries the times the change gave the store."""
    def apply(seq: int | None) -> tp.Operation:
        op = op_of_seq(seq or 0)
        group.tree.apply(op)
        return group.tree.stamped(op) if seq is not None else op
    return apply


def _finished_aside(tree: Tree, aside: AsideCopy, frame: Callable[..., tp.Clone]) -> Apply:
    """An apply function that links a clone copied aside (brought up to
    its source first) under its name; the frame makes the replica's."""
    def apply(seq: int | None) -> tp.Operation:
        op = frame(seq=seq or 0)
        tree.forget(op.path)
        dir_fd, leaf = tree.at(op.path)
        aside.finish(dir_fd, leaf, op.mode, op.uid, op.gid)
        return tree.stamped(op) if seq is not None else op
    return apply


def _created(tree: Tree, made: tp.Create, flags: int, opened: list[int]) -> Apply:
    """An apply function that creates file *made* (its path, mode and
    owner; any seq) and opens it, appending the descriptor to *opened*."""
    def apply(seq: int | None) -> tp.Operation:
        tree.forget(made.path)
        dir_fd, leaf = tree.at(made.path)  # here, not before an await: cached descriptors can be evicted
        fd = os.open(leaf, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | _local_flags(flags),
                     stat.S_IMODE(made.mode), dir_fd=dir_fd)
        opened.append(fd)
        os.fchown(fd, made.uid, made.gid)
        os.fchmod(fd, stat.S_IMODE(made.mode))
        op = dataclasses.replace(made, seq=seq or 0)
        return tree.stamped(op) if seq is not None else op
    return apply


def _emptied(fd: int, path: bytes) -> Apply:
    """An apply function that truncates open file *fd* to nothing; its
    frame carries the mtime that gave the file."""
    def apply(seq: int | None) -> tp.Operation | None:
        os.ftruncate(fd, 0)
        if seq is None:
            return None
        return tp.SetAttr(seq=seq, path=path, fields=tp.ATTR_SIZE | tp.ATTR_MTIME, size=0,
                          mtime_ns=os.fstat(fd).st_mtime_ns)
    return apply


def _written_here(fh: int, off: int, data: bytes | memoryview, path: bytes, written: list[int]) -> Apply:
    """An apply function that writes *data* here, then returns the frame
    of what it wrote (a short local write sends what it wrote) with the
    mtime that gave the file — one fstat. ``written[0]`` counts the bytes;
    OSError only when none could be written."""
    def apply(seq: int | None) -> tp.Operation | None:
        view = memoryview(data)
        while written[0] < len(data):
            try:
                written[0] += os.pwrite(fh, view[written[0]:], off + written[0])
            except OSError:
                if not written[0]:
                    raise
                break
        if seq is None:
            return None
        return tp.Write(seq=seq, path=path, offset=off, data=data[:written[0]], mtime_ns=os.fstat(fh).st_mtime_ns)
    return apply


def _set_attributes(fd: int, bits: int, kw: dict[str, int]) -> None:
    """SetAttr's change through a descriptor (of a file with no known name)."""
    if bits & tp.ATTR_SIZE:
        os.ftruncate(fd, kw["size"])
    if bits & (tp.ATTR_UID | tp.ATTR_GID):
        os.fchown(fd, kw.get("uid", -1), kw.get("gid", -1))
    if bits & tp.ATTR_MODE:
        os.fchmod(fd, kw["mode"])
    if bits & tp.ATTR_TIMES:
        os.utime(fd, ns=(kw["atime_ns"], kw["mtime_ns"]))


# --- translations between pyfuse3's values and the store's --------------------------


def _setattr_fields(attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                    current: Callable[[], os.stat_result]) -> tuple[int, dict[str, int]]:
    """SetAttr's field bits and values for what setattr asks; a time not
    set keeps its *current* value (both go in one frame)."""
    bits, kw = 0, {}
    if fields.update_size:
        bits |= tp.ATTR_SIZE
        kw["size"] = attr.st_size
    if fields.update_mode:
        bits |= tp.ATTR_MODE
        kw["mode"] = stat.S_IMODE(attr.st_mode)
    if fields.update_uid:
        bits |= tp.ATTR_UID
        kw["uid"] = attr.st_uid
    if fields.update_gid:
        bits |= tp.ATTR_GID
        kw["gid"] = attr.st_gid
    if fields.update_atime or fields.update_mtime:
        st = current()
        bits |= tp.ATTR_TIMES
        kw["atime_ns"] = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
        kw["mtime_ns"] = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
    return bits, kw


def _owner(tree: Tree, path: bytes, ctx: pyfuse3.RequestContext, mode: int) -> tuple[int, int, int]:
    """(uid, gid, mode) of a new entry at *path*: the caller's, with BSD
    group semantics in setgid directories."""
    parent = tree.lstat(path.rpartition(b"/")[0])
    gid = ctx.gid
    if parent.st_mode & stat.S_ISGID:
        gid = parent.st_gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    return ctx.uid, gid, mode


def _local_flags(flags: int) -> int:
    """The open flags for the store: without those the kernel has already
    acted on, and write-only opened read-write (with the writeback cache
    the kernel reads through a write-only handle too)."""
    flags &= ~_STRIP
    if flags & os.O_ACCMODE == os.O_WRONLY:
        flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags


def _attributes(st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = ino
    entry.generation = 0
    entry.entry_timeout = TIMEOUT
    entry.attr_timeout = TIMEOUT
    entry.st_mode = st.st_mode
    entry.st_nlink = st.st_nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    entry.st_rdev = st.st_rdev
    entry.st_size = st.st_size
    entry.st_blksize = st.st_blksize
    entry.st_blocks = st.st_blocks
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    return entry
