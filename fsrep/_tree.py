"""A directory tree reached only through file descriptors.

Both sides apply replicated operations to a tree of this class: the
primary to its store, the secondary to a replica, each frame through the
same row of ``_apply``'s table. Because the code is the same, an operation
that succeeded on the primary does the same thing on the secondary. This
class owns the confinement, the descriptor caches and the reads; the
frames' handlers reach the tree only through it.

How this works: every path is group-relative (already validated by the
frame: no absolute paths, no ``..``). Parent directories are opened one
component at a time with ``O_PATH | O_DIRECTORY | O_NOFOLLOW`` from the root
descriptor, so a symlink anywhere in the parent chain fails the operation
(ELOOP/ENOTDIR) instead of leading outside the root. The last component is
never followed either (``O_NOFOLLOW``, ``follow_symlinks=False``, or an
``O_PATH`` descriptor used through ``/proc/self/fd``, which names the inode
itself).

Times: a frame that changes an mtime carries the value the primary's store
got (see ``tp.Operation``); the primary fills it in with ``stamped`` right
after applying the frame, and applying it sets it right after the change —
through the same confined descriptors, never following a symlink, the atime
left alone — so in sequence order the replica's mtimes are the primary's.

Caveats:
- Small LRU caches keep parent-directory and file descriptors; renames and
  rmdirs drop them all, unlinks and creates drop the path concerned.
- ``.fsrep`` at the root is reserved for fsrep's own state: no operation may
  name it. Every group's tree has its own root, so on the primary ``.fsrep``
  is reserved at the root of the mount and of every declared group.
- On the primary, one store holds several consistency groups: the mount's
  tree and one tree per group (``subtree``) share one family, so a rename or
  rmdir through any of them drops the descriptors all of them cached. The
  default group's tree *hides* the other groups' roots: it neither lists nor
  reaches them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import tracking
import transport as tp

from ._apply import mutate
from ._reserved import RESERVED, STAGING
from ._sparse import data_segments, proc_path, set_mtime, syncfs

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHE = 64

class Tree:
    """Operations on the tree below *root*, confined to it."""

    def __init__(self, root: str | os.PathLike[str], *, hidden: Iterable[bytes] = (),
                 family: list[Tree] | None = None) -> None:
        self.root = os.fspath(root)
        self.root_fd = os.open(self.root, _DIR_FLAGS)
        self.staging: str | None = None  # where STAGING/<name> lies, when set (``stage_in``)
        self._staging_fd: int | None = None
        self.hidden = frozenset(hidden)
        self._dirs: OrderedDict[bytes, int] = OrderedDict()
        self._files: OrderedDict[bytes, int] = OrderedDict()
        self._family = family if family is not None else []
        self._family.append(self)
        self._grafts: dict[bytes, Tree] = {}  # paths served by another tree's root: groups moved elsewhere

    def subtree(self, path: bytes = b"", *, hidden: Iterable[bytes] = ()) -> Tree:
        """A tree rooted at *path* of this one (a consistency group's), in
        the same family; *hidden* paths (relative to it) are out of its reach."""
        root = os.path.join(self.root, os.fsdecode(path)) if path else self.root
        return Tree(root, hidden=hidden, family=self._family)

    def graft(self, path: bytes, tree: Tree) -> None:
        """Serve *path* and everything below it from *tree*'s root: a
        consistency group whose data lives outside this tree (``_move``).
        *path* itself stays an (empty) directory here, so that its parent
        lists it; everything else about it is *tree*'s root."""
        self._grafts[path] = tree
        self.forget_all()

    @property
    def grafts(self) -> frozenset[bytes]:
        """The paths grafted (see ``graft``)."""
        return frozenset(self._grafts)

    def ungraft(self, path: bytes) -> None:
        """Serve *path* from this tree again."""
        self._grafts.pop(path, None)
        self.forget_all()

    def beside(self, root: str | os.PathLike[str]) -> Tree:
        """A tree rooted at *root*, in this one's family (its descriptors
        are forgotten with theirs): a group's data kept elsewhere."""
        return Tree(root, family=self._family)

    def grafted(self, path: bytes) -> tuple[Tree, bytes] | None:
        """The tree that serves *path*, and *path* within it, when a graft
        does (None when this tree does)."""
        for top, tree in self._grafts.items():
            if path == top:
                return tree, b""
            if path.startswith(top + b"/"):
                return tree, path[len(top) + 1:]
        return None

    def stage_in(self, directory: str | os.PathLike[str]) -> None:
        """Let STAGING/<name> name the entry <name> of *directory*, outside
        the tree: where a group's clone backups are kept (``_clone_backups``).
        Nothing else under RESERVED is reachable. *directory* is made when
        first needed: a store that never stages holds none."""
        self._close_staging()
        self.staging = os.fspath(directory)

    def _staging_dir(self) -> int:
        if self._staging_fd is None:
            assert self.staging is not None
            os.makedirs(self.staging, mode=0o700, exist_ok=True)
            self._staging_fd = os.open(self.staging, _DIR_FLAGS)
        return self._staging_fd

    def _close_staging(self) -> None:
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None

    def reroot(self, root: str | os.PathLike[str]) -> None:
        """Serve the tree from *root* from now on (a group's data copied to
        another file system): the root descriptor keeps its number, so
        whatever holds it follows, and the family forgets what it cached."""
        fd = os.open(os.fspath(root), _DIR_FLAGS)
        try:
            os.dup2(fd, self.root_fd, inheritable=False)
        finally:
            os.close(fd)
        self.root = os.fspath(root)
        self.forget_all()

    def close(self) -> None:
        self._forget_own()
        os.close(self.root_fd)
        self._close_staging()
        self._family.remove(self)

    def sync(self) -> None:
        """syncfs() the filesystem holding the tree (needs a real fd, not O_PATH)."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.root_fd)
        try:
            syncfs(fd)
        finally:
            os.close(fd)

    # --- descriptor caches ------------------------------------------------

    def forget_all(self) -> None:
        """Drop every cached descriptor of the family: after a rename or a
        removal, a cached path may name another entry, or none."""
        for tree in self._family:
            tree._forget_own()

    def _forget_own(self) -> None:
        for cache in (self._dirs, self._files):
            for fd in cache.values():
                os.close(fd)
            cache.clear()

    def forget(self, path: bytes) -> None:
        fd = self._files.pop(path, None)
        if fd is not None:
            os.close(fd)

    @staticmethod
    def _remember(cache: OrderedDict[bytes, int], key: bytes, fd: int) -> None:
        cache[key] = fd
        if len(cache) > _CACHE:
            os.close(cache.popitem(last=False)[1])

    def _dir(self, path: bytes) -> int:
        """A cached O_PATH descriptor of directory *path* (b"" is the root),
        opened one component at a time from its deepest cached ancestor —
        a loop, not recursion: trees can be deeper than Python's stack."""
        if not path:
            return self.root_fd
        fd = self._dirs.get(path)
        if fd is not None:
            self._dirs.move_to_end(path)
            return fd
        start, base = 0, self.root_fd
        cut = len(path)
        while (cut := path.rfind(b"/", 0, cut)) > 0:
            cached = self._dirs.get(path[:cut])
            if cached is not None:
                start, base = cut + 1, cached
                break
        names = path[start:].split(b"/")
        fd = base
        try:
            for name in names:
                opened = os.open(name, _DIR_FLAGS, dir_fd=fd)
                if fd != base:
                    os.close(fd)
                fd = opened
        except BaseException:
            if fd != base:
                os.close(fd)
            raise
        self._remember(self._dirs, path, fd)
        return fd

    def at(self, path: bytes) -> tuple[int, bytes]:
        """(parent directory fd, last component) of a non-root *path*."""
        tp.check_path(path)
        if not path:
            raise OSError(errno.EINVAL, "the group root has no parent")
        if self._grafts and (graft := self.grafted(path)) is not None:
            return graft[0].at(graft[1])
        if path.partition(b"/")[0] == RESERVED:
            parent, _, name = path.rpartition(b"/")
            if parent == STAGING and self.staging is not None:
                return self._staging_dir(), name
            raise OSError(errno.EPERM, ".fsrep is reserved for fsrep's own state")
        if self.hidden and self.is_hidden(path):
            raise OSError(errno.EXDEV, "the path belongs to another consistency group")
        parent, _, name = path.rpartition(b"/")
        return self._dir(parent), name

    @contextlib.contextmanager
    def entry(self, path: bytes) -> Iterator[int]:
        """An O_PATH descriptor of the entry itself (never followed)."""
        if not path:
            yield self.root_fd
            return
        if self._grafts and (graft := self.grafted(path)) is not None:
            with graft[0].entry(graft[1]) as fd:
                yield fd
            return
        d, name = self.at(path)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        try:
            yield fd
        finally:
            os.close(fd)

    def open(self, path: bytes, flags: int, mode: int = 0o600) -> int:
        """Open *path* (never through a symlink); the caller closes the fd."""
        if not path:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=self.root_fd)
        if self._grafts and (graft := self.grafted(path)) is not None:
            return graft[0].open(graft[1], flags, mode)
        d, name = self.at(path)
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=d)

    def open_regular(self, path: bytes, flags: int) -> int:
        """Open *path* only if it is a regular file; the caller closes the fd.

        Data, size, sync and digest operations go through here: the entry
        is looked at through an O_PATH descriptor first, so a device node
        or FIFO is never opened (opening one can write to a host device,
        rewind a tape or block on a pipe).

        Raises:
            OSError: EISDIR for a directory, ELOOP for a symlink (as
                O_NOFOLLOW gives), EINVAL for a device node, FIFO or socket;
                as open(2) otherwise.
        """
        with self.entry(path) as fd:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                code = errno.EISDIR if stat.S_ISDIR(mode) else errno.ELOOP if stat.S_ISLNK(mode) else errno.EINVAL
                raise OSError(code, f"{os.fsdecode(path)!r} is not a regular file")
            return os.open(proc_path(fd), flags | os.O_CLOEXEC)

    def writable(self, path: bytes) -> int:
        """A cached write descriptor of regular file *path*; the tree
        closes it (when the cache drops it, or the path is forgotten)."""
        fd = self._files.get(path)
        if fd is None:
            fd = self.open_regular(path, os.O_WRONLY)
            self._remember(self._files, path, fd)
        else:
            self._files.move_to_end(path)
        return fd

    def keep_writable(self, path: bytes, fd: int) -> None:
        """Cache *fd*, just opened for writing regular file *path*, as
        ``writable`` would; from now on the tree closes it."""
        self._remember(self._files, path, fd)

    # --- reads ---------------------------------------------------------------

    def lstat(self, path: bytes) -> os.stat_result:
        if not path:
            return os.stat(self.root_fd)
        if self._grafts and (graft := self.grafted(path)) is not None:
            return graft[0].lstat(graft[1])
        d, name = self.at(path)
        return os.stat(name, dir_fd=d, follow_symlinks=False)

    def readlink(self, path: bytes) -> bytes:
        d, name = self.at(path)
        return os.readlink(name, dir_fd=d)

    def listdir(self, path: bytes) -> list[bytes]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = [os.fsencode(n) for n in os.listdir(fd)]
        finally:
            os.close(fd)
        if not path:
            names = [n for n in names if n != RESERVED]
        if self.hidden:
            names = [n for n in names if (path + b"/" + n if path else n) not in self.hidden]
        return names

    def is_hidden(self, path: bytes) -> bool:
        """Whether *path* is, or is below, a hidden root."""
        return any(path == h or path.startswith(h + b"/") for h in self.hidden)

    def walk(self, top: bytes = b"") -> Iterator[tuple[bytes, os.stat_result]]:
        """Every entry under directory *top* (the root by default; not *top*
        itself) with its lstat: a directory before its children, names in
        order within a directory. Entries that vanish meanwhile are skipped."""
        pending = [top]
        while pending:
            parent = pending.pop()
            try:
                names = sorted(self.listdir(parent))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                path = parent + b"/" + name if parent else name
                try:
                    st = self.lstat(path)
                except FileNotFoundError:
                    continue
                yield path, st
                if stat.S_ISDIR(st.st_mode):
                    pending.append(path)

    def data_bytes(self) -> int:
        """Bytes of data under the root (holes left out, roughly: allocated
        blocks): what a copy of the tree writes, for its progress bar."""
        return sum(min(st.st_size, st.st_blocks * 512) for _, st in self.walk() if stat.S_ISREG(st.st_mode))

    def entries(self, path: bytes, after: bytes, max_bytes: int) -> tuple[list[tp.DirEntry], bool]:
        """Entries of directory *path* with names after *after*, in name
        order, at most about *max_bytes* of them encoded; and whether more
        follow."""
        out: list[tp.DirEntry] = []
        size = 0
        for name in sorted(n for n in self.listdir(path) if n > after):
            if size >= max_bytes:
                return out, True
            child = path + b"/" + name if path else name
            try:
                st = self.lstat(child)
            except FileNotFoundError:
                continue
            out.append(tp.DirEntry(name, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                   st.st_nlink))
            size += len(name) + 40
        return out, False

    def digests(self, path: bytes, offset: int, count: int) -> bytes:
        """Digests of *count* regions of regular file *path* from *offset*
        (see ``tracking.region_digests``); a missing or non-regular entry
        digests as empty."""
        try:
            fd = self.open_regular(path, os.O_RDONLY)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.EINVAL):
                raise
            return tracking.region_digests(b"", count)
        try:
            data = os.pread(fd, count * tracking.REGION_SIZE, offset)
        finally:
            os.close(fd)
        return tracking.region_digests(data, count)

    def data_map(self, path: bytes, offset: int, length: int, max_runs: int) -> tuple[list[tuple[int, int]], int]:
        """Where regular file *path* holds data within *length* bytes from
        *offset*: at most *max_runs* (offset, length) runs, and how far they
        cover (all of the range unless more runs follow). A missing or
        non-regular entry holds none."""
        stop = offset + length
        try:
            fd = self.open_regular(path, os.O_RDONLY)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.EINVAL):
                raise
            return [], stop
        try:
            runs: list[tuple[int, int]] = []
            for first, end in data_segments(fd, offset, stop):
                if len(runs) == max_runs:
                    return runs, first
                runs.append((first, end - first))
            return runs, stop
        finally:
            os.close(fd)

    def getxattr(self, path: bytes, name: bytes) -> bytes:
        with self.entry(path) as fd:
            return os.getxattr(proc_path(fd), name)

    def listxattr(self, path: bytes) -> list[bytes]:
        with self.entry(path) as fd:
            return [os.fsencode(n) for n in os.listxattr(proc_path(fd))]

    # --- mutations (what each frame does is ``_apply``'s table) -------------------

    def apply(self, op: tp.Operation) -> None:
        """Apply one replicated mutation (the primary applies its own
        through here; a replica's stream goes through ``_apply.apply``).

        Raises:
            OSError: the operation failed; the tree is as the failed system
                call left it. ENOSYS for a frame that is no mutation.
        """
        mutate(self, op)

    def set_mtime(self, path: bytes, mtime_ns: int) -> None:
        """The mtime of the entry itself (a symlink's own), atime untouched."""
        if not path:
            set_mtime(self.root_fd, b".", mtime_ns)
            return
        if self._grafts and (graft := self.grafted(path)) is not None:
            graft[0].set_mtime(graft[1], mtime_ns)
            return
        d, name = self.at(path)
        set_mtime(d, name, mtime_ns)

    @contextlib.contextmanager
    def held_parent(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """Like ``at``, with a descriptor of its own: resolving a second
        path may evict (and close) cached ones."""
        d, name = self.at(path)
        fd = os.dup(d)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def stamped(self, op: tp.Operation) -> tp.Operation:
        """*op*, just applied to this tree, with the mtimes it carries
        filled in from here: what makes the replica's times this tree's.
        A truncate carries the file's new mtime (ATTR_MTIME), unless it
        sets the times itself."""
        if isinstance(op, tp.SetAttr):
            if op.fields & tp.ATTR_SIZE and not op.fields & tp.ATTR_TIMES:
                return dataclasses.replace(op, fields=op.fields | tp.ATTR_MTIME,
                                           mtime_ns=self.lstat(op.path).st_mtime_ns)
            return op
        if not op.TIMES:
            return op
        found: dict[bytes, int] = {}
        values = {}
        for name, path_field, of_parent in op.TIMES:
            path = getattr(op, path_field)
            if of_parent:
                path = path.rpartition(b"/")[0]
            if path not in found:
                found[path] = self.lstat(path).st_mtime_ns
            values[name] = found[path]
        return dataclasses.replace(op, **values)
