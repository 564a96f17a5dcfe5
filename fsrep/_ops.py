"""The FUSE operations: a passthrough over the primary store whose every
mutation goes through the splitter.

How this works: reads are served from the store. Each mutating handler
builds the replicated frame from the inode's current path, and hands the
splitter a plain function that applies the change locally and returns that
frame; then it awaits the secondary's ack. Handlers stay thin: path and inode
bookkeeping live in ``InodeTable``, confinement in ``Tree``, which
consistency group a path belongs to in ``Groups``, ordering in
``Relationship``, error mapping in ``fuse_errors``.

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
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

import tracking
import transport as tp
from tracking import Marks

from ._boundary import fuse_errors, requests_running
from ._dirstream import DirStream
from ._groups import Group, Groups
from ._inodes import ROOT, InodeTable
from ._tree import RESERVED, Tree

TIMEOUT = 1.0
FRAME_FIRST = 128 * 1024  # larger writes go in pieces of this size, sent before they are applied here (but the last)
CAPABILITY = b"security.capability"
SYNC_INLINE_BYTES = 1024 * 1024  # an fsync after no more writes than this runs on the event loop when alone
NO_CAPS_LIMIT = 100_000  # inodes remembered without capabilities; forgotten all at once past this
_STRIP = os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_NOCTTY | getattr(os, "O_DIRECT", 0)


_BY_FILE_HANDLE = frozenset({"read", "write", "fsync", "release"})
_BY_DIR_HANDLE = frozenset({"readdir", "releasedir", "fsyncdir"})


def _removed() -> OSError:
    return OSError(errno.ENOENT, "the file was removed")


@dataclass(slots=True)
class Handle:
    fd: int
    ino: int
    unsynced: int = 0  # bytes written through this handle since its last fsync


@dataclass(slots=True)
class DirHandle:
    """An open directory: a cursor into the store's, never a copy of its
    listing (a handle costs one descriptor and one small batch)."""

    ino: int
    stream: DirStream


class Operations(pyfuse3.Operations):
    """pyfuse3 handlers for one mount and its consistency groups."""

    def __init__(self, tree: Tree, groups: Groups, *, writeback_cache: bool = False) -> None:
        super().__init__()
        self.enable_writeback_cache = writeback_cache
        self.tree = tree
        self.groups = groups
        self.inodes = InodeTable(os.stat(tree.root_fd).st_ino)
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}  # by the descriptor of the store's directory
        self._unlinked_fds: dict[int, int] = {}
        self._orphans: dict[int, Group] = {}  # the group each of those was removed from
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
        first = args[0] if args and isinstance(args[0], int) else None
        ino = None
        if first is not None:
            if handler in _BY_FILE_HANDLE or handler in _BY_DIR_HANDLE:
                handles = self._handles if handler in _BY_FILE_HANDLE else self._dirs
                handle = handles.get(first)
                ino = handle.ino if handle is not None else None
            else:
                ino = first
        path = None
        if ino is not None and ino in self.inodes:
            path = self.inodes.path(ino)
        if path is None:
            return list(self.groups.all)
        return [self.groups.route(path)[0]]

    def _attrs(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = self.inodes.fuse_ino(st.st_ino)
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

    def _path(self, ino: int) -> bytes | None:
        return self.inodes.path(ino)

    def _existing_path(self, ino: int) -> bytes:
        """The path of *ino*; ENOENT once it was unlinked."""
        path = self.inodes.path(ino)
        if path is None:
            raise _removed()
        return path

    def _unlinked_fd(self, ino: int) -> int:
        """A descriptor of *ino* after its last name was removed."""
        fd = self._unlinked_fds.get(ino)
        if fd is None:
            raise _removed()
        return fd

    def _nameless(self, ino: int, fd: int) -> Group | None:
        """The group of an open file none of whose names this mount knows
        but which still has one (a hard link the kernel never looked up:
        ``a`` opened and unlinked, ``b`` still there); None when the file has
        no name left at all, and its changes are nobody else's."""
        group = self._orphans.get(ino)
        if group is None or os.fstat(fd).st_nlink == 0:
            return None
        return group

    def _keep_nameless(self, group: Group, ino: int, apply: Any, *, data: tuple[int, int] | None = None) -> None:
        """A change to such a file: local, dirty under its inode, and found
        by a resync (no frame can carry a name this mount does not know)."""
        backing = self._backing(ino)
        marks = Marks(regions=((backing, tracking.UNNAMED, *data),) if data is not None else (),
                      meta=((backing, tracking.UNNAMED),))
        group.rel.keep_local(apply, marks, "a file was changed through a name that was removed while another of "
                                           "its hard links, not yet seen by this mount, remains")

    def _reserved(self, parent: int, name: bytes) -> bool:
        """Whether *name* in *parent* is ``.fsrep`` at the root of the mount
        or of a group (where the group's replica keeps its state)."""
        return name == RESERVED and (parent == ROOT or self.inodes.path(parent) in self.groups.roots)

    def _child(self, parent: int, name: bytes) -> bytes:
        if self._reserved(parent, name):
            raise OSError(errno.EPERM, ".fsrep is reserved")
        return self.inodes.child_path(parent, name)

    def _stat_ino(self, ino: int) -> os.stat_result:
        path = self._path(ino)
        if path is not None:
            return self.tree.lstat(path)
        return os.fstat(self._unlinked_fd(ino))

    def _owner(self, parent_path: bytes, ctx: pyfuse3.RequestContext, mode: int) -> tuple[int, int, int]:
        """(uid, gid, mode) of a new entry: the caller's, with BSD group
        semantics in setgid directories."""
        parent = self.tree.lstat(parent_path)
        gid = ctx.gid
        if parent.st_mode & stat.S_ISGID:
            gid = parent.st_gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return ctx.uid, gid, mode

    @staticmethod
    async def _replicate(group: Group, apply: Any, marks: Marks) -> None:
        await group.rel.admit()
        await group.rel.wait(group.rel.split(apply, marks))

    # --- what a mutation would leave dirty if it is not replicated ------------------

    def _backing(self, ino: int) -> int:
        """The backing st_ino of a FUSE inode (the mapping is its own inverse)."""
        return self.inodes.fuse_ino(ino)

    def _above(self, group: Group, ino: int) -> tuple[int, ...]:
        """Backing inodes of the directories of *group* above *ino*."""
        found = self._locate(ino)
        return found[2] if found is not None else ()

    def _locate(self, ino: int) -> tuple[Group, bytes, tuple[int, ...]] | None:
        """The group of *ino*, its path there and the group's directories
        above it (one walk up the inode table); None once it was unlinked."""
        found = self.inodes.chain(ino)
        if found is None:
            return None
        group, rel = self.groups.route(found[0])
        return group, rel, tuple(self._backing(d) for d in found[1][group.depth:])

    def _in_dirs(self, group: Group, *parents: int) -> Marks:
        """Marks of a namespace change in directories *parents* of *group*."""
        dirs, ancestors = [], []
        for parent in parents:
            path = self.inodes.path(parent)
            dirs.append((self._backing(parent), group.relative(path or b"")))
            ancestors.extend(self._above(group, parent))
        return Marks(dirs=tuple(dirs), ancestors=tuple(ancestors))

    def _moved(self, old: bytes, new: bytes) -> Marks:
        """Marks of an entry renamed from mount path *old* to *new* (a path
        in its group): the replica may hold another entry of the same kind
        (even size) at *new*, so a moved file is copied whole and a moved
        directory is compared entry by entry."""
        try:
            st = self.tree.lstat(old)
        except OSError:
            return Marks()
        if stat.S_ISDIR(st.st_mode):
            return Marks(dirs=((st.st_ino, new),))
        if stat.S_ISREG(st.st_mode) and st.st_size:
            return Marks(regions=((st.st_ino, new, 0, st.st_size),), meta=((st.st_ino, new),))
        return Marks(meta=((st.st_ino, new),))

    def _on_file(self, ino: int, group: Group, path: bytes, *, size_change: tuple[int, int] | None = None,
                 write: tuple[int, int] | None = None, above: tuple[int, ...] | None = None) -> Marks:
        """Marks of a change to one file (*path* in *group*): its data
        regions or its metadata. *above* (the group's directories over it)
        is looked up unless the caller has it."""
        if above is None:
            above = self._above(group, ino)
        backing = self._backing(ino)
        regions = []
        if write is not None:
            regions.append((backing, path, *write))
        if size_change is not None and size_change[0] != size_change[1]:
            low, high = sorted(size_change)
            regions.append((backing, path, low, high - low))
        meta = () if write is not None else ((backing, path),)
        return Marks(regions=tuple(regions), meta=meta, ancestors=above, parent=above[-1] if above else None)

    def _entry(self, parent: int, name: bytes, path: bytes) -> pyfuse3.EntryAttributes:
        st = self.tree.lstat(path)
        self.inodes.remember(st.st_ino, parent, name)
        return self._attrs(st)

    async def _make(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                    frame: Any, **extra: Any) -> pyfuse3.EntryAttributes:
        """Shared body of mkdir, mknod: build the frame, apply it on both sides."""
        path = self._child(parent, name)
        group, rel = self.groups.claim(path, errno.EEXIST)
        parent_path = path.rpartition(b"/")[0]
        uid, gid, mode = self._owner(parent_path, ctx, mode & ~ctx.umask)
        await self._replicate(group, self._apply_frame(
            group, lambda seq: frame(seq=seq, path=rel, mode=mode, uid=uid, gid=gid, **extra)),
            self._in_dirs(group, parent))
        return self._entry(parent, name, path)

    @staticmethod
    def _apply_frame(group: Group, op_of_seq: Any) -> Any:
        """An apply function for frames the Tree applies on both sides
        alike; the frame sent carries the times the change gave the store."""
        def apply(seq: int | None) -> tp.Operation:
            op = op_of_seq(seq or 0)
            group.tree.apply(op)
            return group.tree.stamped(op) if seq is not None else op
        return apply

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
            current = self._stat_ino(inode)
            bits |= tp.ATTR_TIMES
            kw["atime_ns"] = attr.st_atime_ns if fields.update_atime else current.st_atime_ns
            kw["mtime_ns"] = attr.st_mtime_ns if fields.update_mtime else current.st_mtime_ns
        if bits:
            path = self._path(inode)
            if path is None:
                group = self._nameless(inode, self._unlinked_fd(inode))
                if group is None:
                    self._setattr_unlinked(inode, bits, kw)
                else:
                    self._keep_nameless(group, inode, lambda seq: self._setattr_unlinked(inode, bits, kw))
            else:
                group, rel = self.groups.route(path)
                old_size = self.tree.lstat(path).st_size if bits & tp.ATTR_SIZE else 0
                marks = self._on_file(inode, group, rel,
                                      size_change=(old_size, kw["size"]) if bits & tp.ATTR_SIZE else None)
                await self._replicate(group, self._apply_frame(
                    group, lambda seq: tp.SetAttr(seq=seq, path=rel, fields=bits, **kw)), marks)
        return self._attrs(self._stat_ino(inode))

    def _setattr_unlinked(self, inode: int, bits: int, kw: dict[str, int]) -> None:
        fd = self._unlinked_fd(inode)
        if bits & tp.ATTR_SIZE:
            os.ftruncate(fd, kw["size"])
        if bits & (tp.ATTR_UID | tp.ATTR_GID):
            os.fchown(fd, kw.get("uid", -1), kw.get("gid", -1))
        if bits & tp.ATTR_MODE:
            os.fchmod(fd, kw["mode"])
        if bits & tp.ATTR_TIMES:
            os.utime(fd, ns=(kw["atime_ns"], kw["mtime_ns"]))

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(self._existing_path(inode))

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.tree.root_fd)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                     "f_favail", "f_namemax"):
            setattr(data, name, getattr(sv, name))
        return data

    # --- namespace ------------------------------------------------------------------

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, stat.S_IFDIR | mode, ctx, tp.MkDir)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._make(parent_inode, name, mode, ctx, tp.MkNod, rdev=rdev)

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        group, rel = self.groups.claim(path, errno.EEXIST)
        uid, gid, _ = self._owner(path.rpartition(b"/")[0], ctx, stat.S_IFLNK)
        await self._replicate(group, self._apply_frame(
            group, lambda seq: tp.Symlink(seq=seq, path=rel, target=target, uid=uid, gid=gid)),
            self._in_dirs(group, parent_inode))
        return self._entry(parent_inode, name, path)

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        target = self._existing_path(inode)
        new = self._child(new_parent_inode, new_name)
        self.groups.claim(new, errno.EEXIST)
        group, rel_target, rel_new = self.groups.same(target, new)
        into, on = self._in_dirs(group, new_parent_inode), self._on_file(inode, group, rel_target)
        marks = Marks(meta=on.meta, dirs=into.dirs, ancestors=into.ancestors + on.ancestors)
        await self._replicate(group, self._apply_frame(
            group, lambda seq: tp.Link(seq=seq, target=rel_target, new=rel_new)), marks)
        return self._entry(new_parent_inode, new_name, new)

    async def _remove(self, parent_inode: int, name: bytes, frame: Any) -> None:
        path = self._child(parent_inode, name)
        group, rel = self.groups.claim(path, errno.EBUSY)
        ino = self.inodes.lookup_entry(parent_inode, name)
        keep_fd = None
        if ino is not None and frame is tp.Unlink:
            keep_fd = self._open_fd_of(ino)
        await self._replicate(group, self._apply_frame(group, lambda seq: frame(seq=seq, path=rel)),
                              self._in_dirs(group, parent_inode))
        self.inodes.unlinked(parent_inode, name)
        if ino is not None and keep_fd is not None and ino in self.inodes and self.inodes.path(ino) is None:
            self._unlinked_fds.setdefault(ino, keep_fd)
            self._orphans.setdefault(ino, group)

    def _open_fd_of(self, ino: int) -> int | None:
        for handle in self._handles.values():
            if handle.ino == ino:
                return handle.fd
        return None

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
        wire = (tp.RENAME_NOREPLACE if flags & pyfuse3.RENAME_NOREPLACE else 0) | \
               (tp.RENAME_EXCHANGE if flags & pyfuse3.RENAME_EXCHANGE else 0)
        replaced = None
        if not wire & tp.RENAME_EXCHANGE:
            replaced = self.inodes.lookup_entry(parent_inode_new, name_new)
            keep_fd = self._open_fd_of(replaced) if replaced is not None else None
        marks = self._in_dirs(group, parent_inode_old, parent_inode_new)
        moved = [self._moved(old, rel_new)]
        if wire & tp.RENAME_EXCHANGE:
            moved.append(self._moved(new, rel_old))
        marks = Marks(regions=tuple(r for m in moved for r in m.regions), meta=tuple(x for m in moved for x in m.meta),
                      dirs=marks.dirs + tuple(d for m in moved for d in m.dirs), ancestors=marks.ancestors)
        await self._replicate(group, self._apply_frame(
            group, lambda seq: tp.Rename(seq=seq, old=rel_old, new=rel_new, flags=wire)), marks)
        if wire & tp.RENAME_EXCHANGE:
            self.inodes.exchanged(parent_inode_old, name_old, parent_inode_new, name_new)
        else:
            self.inodes.renamed(parent_inode_old, name_old, parent_inode_new, name_new)
            if replaced is not None and keep_fd is not None and replaced in self.inodes \
                    and self.inodes.path(replaced) is None:
                self._unlinked_fds.setdefault(replaced, keep_fd)
                self._orphans.setdefault(replaced, group)

    # --- files ------------------------------------------------------------------------

    def _local_flags(self, flags: int) -> int:
        flags &= ~_STRIP
        if flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    def _new_handle(self, fd: int, ino: int, flags: int) -> pyfuse3.FileInfo:
        self._handles[fd] = Handle(fd, ino)
        self.inodes.opened(ino)
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        path = self._existing_path(inode)
        fd = self.tree.open(path, self._local_flags(flags))
        try:
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                group, rel = self.groups.route(path)

                def apply(seq: int | None) -> tp.Operation | None:
                    os.ftruncate(fd, 0)
                    if seq is None:
                        return None
                    return tp.SetAttr(seq=seq, path=rel, fields=tp.ATTR_SIZE | tp.ATTR_MTIME, size=0,
                                      mtime_ns=os.fstat(fd).st_mtime_ns)
                await self._replicate(group, apply,
                                      self._on_file(inode, group, rel, size_change=(os.fstat(fd).st_size, 0)))
        except BaseException:
            os.close(fd)
            raise
        return self._new_handle(fd, inode, flags)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        group, rel = self.groups.claim(path, errno.EEXIST)
        uid, gid, mode = self._owner(path.rpartition(b"/")[0], ctx, mode & ~ctx.umask)
        opened: list[int] = []

        def apply(seq: int | None) -> tp.Operation:
            group.tree.forget(rel)
            dir_fd, leaf = group.tree.at(rel)  # here, not before an await: cached descriptors can be evicted
            fd = os.open(leaf, os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | self._local_flags(flags),
                         stat.S_IMODE(mode), dir_fd=dir_fd)
            opened.append(fd)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))
            op = tp.Create(seq=seq or 0, path=rel, mode=mode, uid=uid, gid=gid)
            return group.tree.stamped(op) if seq is not None else op

        try:
            await self._replicate(group, apply, self._in_dirs(group, parent_inode))
        except BaseException:
            for fd in opened:
                os.close(fd)
            raise
        st = os.fstat(opened[0])
        ino = self.inodes.remember(st.st_ino, parent_inode, name)
        self._without_caps(ino)  # a new file has none
        return self._new_handle(opened[0], ino, flags), self._attrs(st)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self._handles[fh]
        handle.unsynced += len(buf)
        found = self._locate(handle.ino)
        if found is None:  # unlinked while open
            orphan = self._nameless(handle.ino, fh)
            if orphan is None:  # no name left: the replica no longer has the file
                return os.pwrite(fh, buf, off)
            written = []
            self._keep_nameless(orphan, handle.ino, lambda seq: written.append(os.pwrite(fh, buf, off)),
                                data=(off, len(buf)))
            return written[0]
        group, rel, above = found
        await group.rel.admit()
        if len(buf) <= FRAME_FIRST:
            return await self._write_small(fh, off, buf, group, rel,
                                           self._on_file(handle.ino, group, rel, write=(off, len(buf)), above=above))
        # In pieces of FRAME_FIRST bytes, each a frame of its own. All but the
        # last go to the socket before this side writes them: the secondary
        # writes one piece while this side writes the next. The last is
        # written here first, so its frame carries the mtime that gave the
        # file. All are queued in this one step, so their sequence numbers
        # follow each other.
        view = memoryview(buf)
        last = (len(buf) - 1) // FRAME_FIRST * FRAME_FIRST
        written = 0
        pending = None
        for start in range(0, last, FRAME_FIRST):
            piece = view[start:start + FRAME_FIRST]

            def apply(seq: int | None, piece: memoryview = piece, at: int = off + start) -> tp.Operation:
                done = 0
                while done < len(piece):
                    done += os.pwrite(fh, piece[done:], at + done)
                return tp.Write(seq=seq or 0, path=rel, offset=at, data=piece)

            def frame(seq: int, piece: memoryview = piece, at: int = off + start) -> tp.Operation:
                return tp.Write(seq=seq, path=rel, offset=at, data=piece)

            try:
                pending = group.rel.split(apply, self._on_file(handle.ino, group, rel, write=(off + start, len(piece)),
                                                               above=above), frame_first=frame) or pending
            except OSError:
                if not written:
                    raise
                break  # a short write: what was written is on both sides
            written += len(piece)
        else:
            tail = [0]
            with contextlib.suppress(OSError):  # raised only when none of the tail was written: a short write
                pending = group.rel.split(self._written_here(fh, off + last, view[last:], rel, tail),
                                          self._on_file(handle.ino, group, rel, write=(off + last, len(buf) - last),
                                                        above=above)) or pending
            written += tail[0]
        await group.rel.wait(pending)
        return written  # O_SYNC and O_DSYNC: the kernel follows each write with an fsync request

    @staticmethod
    def _written_here(fh: int, off: int, data: bytes | memoryview, rel: bytes, written: list[int]) -> Any:
        """An apply function that writes *data* here, then returns the
        frame of what it wrote (a short local write sends what it wrote)
        with the mtime that gave the file — one fstat. ``written[0]``
        counts the bytes; OSError only when none could be written."""
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
            return tp.Write(seq=seq, path=rel, offset=off, data=data[:written[0]], mtime_ns=os.fstat(fh).st_mtime_ns)
        return apply

    async def _write_small(self, fh: int, off: int, buf: bytes, group: Group, rel: bytes, marks: Marks) -> int:
        """A write of at most FRAME_FIRST bytes: one frame, sent after it
        was applied here."""
        written = [0]
        await group.rel.wait(group.rel.split(self._written_here(fh, off, buf, rel, written), marks))
        return written[0]

    async def _fsync(self, fd: int, path: bytes | None, ino: int, datasync: bool) -> None:
        """A barrier: durable locally and on the secondary before returning
        (the data only with *datasync*, as fdatasync: no journal commit for
        an overwrite that changes no size)."""
        sync = os.fdatasync if datasync else os.fsync
        handle = self._handles.get(fd)
        unsynced = handle.unsynced if handle is not None else 0
        if handle is not None:
            handle.unsynced = 0
        if path is not None:
            group, rel = self.groups.route(path)
            await group.rel.admit()
            pending = group.rel.split(lambda seq: tp.Fsync(seq=seq or 0, path=rel, datasync=int(datasync)),
                                      Marks(ancestors=self._above(group, ino)))
        if unsynced <= SYNC_INLINE_BYTES and requests_running() <= 1:
            # Nothing else is under way and little is to be flushed (a database's commit): here, since the
            # hand-off to a thread and back (about 0.25 ms) would cost more than the flush stalls.
            sync(fd)
            await trio.lowlevel.checkpoint()
        else:
            await trio.to_thread.run_sync(sync, fd)
        if path is not None:
            await group.rel.wait(pending)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles[fh]
        await self._fsync(fh, self._path(handle.ino), handle.ino, datasync)

    # No flush: every write already waited for its ack, so what close() has
    # seen is applied on both sides and nothing is buffered here. The base
    # class answers ENOSYS, after which the kernel stops sending FLUSH (one
    # request less on every close; it still writes back its own cache first).

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return
        if self._unlinked_fds.get(handle.ino) == fh:
            other = self._open_fd_of(handle.ino)
            if other is None:
                del self._unlinked_fds[handle.ino]
                self._orphans.pop(handle.ino, None)
            else:
                self._unlinked_fds[handle.ino] = other
        os.close(fh)
        self.inodes.closed(handle.ino)

    # --- directories ---------------------------------------------------------------------

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fd = self.tree.open(self._existing_path(inode), os.O_RDONLY | os.O_DIRECTORY)
        self._dirs[fd] = DirHandle(inode, DirStream(fd))
        return fd

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries from the kernel's offset on, each with the store's own
        offset after it, so the kernel's next call goes on where this one
        stopped (see ``DirStream``). Attributes come from an lstat of the
        name relative to the open directory: the very directory listed,
        wherever it has been renamed to."""
        handle = self._dirs[fh]
        replied = False
        try:
            for name, after in handle.stream.entries(start_id):
                if name in (b".", b"..") or self._reserved(handle.ino, name):
                    continue
                try:
                    st = os.stat(name, dir_fd=fh, follow_symlinks=False)
                except FileNotFoundError:  # removed since it was listed
                    continue
                if not pyfuse3.readdir_reply(token, name, self._attrs(st), after):
                    return
                self.inodes.remember(st.st_ino, handle.ino, name)
                replied = True
        except OSError:
            if not replied:
                raise
            # The entries already in the reply count as looked up: they go out; the next call, which starts at
            # the entry that failed, reports the error.

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        handle = self._dirs.pop(fh, None)
        if handle is not None:
            handle.stream.close()

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        handle = self._dirs[fh]
        await self._fsync(fh, self._existing_path(handle.ino), handle.ino, datasync)

    # --- extended attributes ----------------------------------------------------------------

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        caps = name == CAPABILITY
        if caps and inode in self._no_caps:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        path = self._path(inode)
        try:
            if path is None:
                return os.getxattr(self._unlinked_fd(inode), name)
            return self.tree.getxattr(path, name)
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
        path = self._path(inode)
        if path is None:
            return [os.fsencode(n) for n in os.listxattr(self._unlinked_fd(inode))]
        return self.tree.listxattr(path)

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name == CAPABILITY:
            self._no_caps.discard(inode)
        path = self._path(inode)
        if path is None:
            fd = self._unlinked_fd(inode)
            orphan = self._nameless(inode, fd)
            if orphan is None:
                os.setxattr(fd, name, value)
            else:
                self._keep_nameless(orphan, inode, lambda seq: os.setxattr(fd, name, value))
            return
        group, rel = self.groups.route(path)
        await self._replicate(group, self._apply_frame(
            group, lambda seq: tp.SetXattr(seq=seq, path=rel, name=name, value=value)),
            self._on_file(inode, group, rel))

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        path = self._path(inode)
        if path is None:
            fd = self._unlinked_fd(inode)
            orphan = self._nameless(inode, fd)
            if orphan is None:
                os.removexattr(fd, name)
            else:
                self._keep_nameless(orphan, inode, lambda seq: os.removexattr(fd, name))
            return
        group, rel = self.groups.route(path)
        try:
            await self._replicate(group, self._apply_frame(
                group, lambda seq: tp.RemoveXattr(seq=seq, path=rel, name=name)), self._on_file(inode, group, rel))
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

