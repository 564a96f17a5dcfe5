"""A directory tree reached only through file descriptors.

Both sides apply replicated operations through this one class: the primary
to its store, the secondary to a replica. Because the code is the same, an
operation that succeeded on the primary does the same thing on the
secondary.

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
after applying the frame, and ``apply`` sets it right after the change —
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

from ._sparse import data_segments, punch, renameat2, set_mtime, syncfs

RESERVED = b".fsrep"
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CACHE = 64

def proc_path(fd: int) -> str:
    """A path naming exactly the inode *fd* refers to (even an O_PATH fd)."""
    return f"/proc/self/fd/{fd}"


class Tree:
    """Operations on the tree below *root*, confined to it."""

    def __init__(self, root: str | os.PathLike[str], *, hidden: Iterable[bytes] = (),
                 family: list[Tree] | None = None) -> None:
        self.root = os.fspath(root)
        self.root_fd = os.open(self.root, _DIR_FLAGS)
        self.hidden = frozenset(hidden)
        self._dirs: OrderedDict[bytes, int] = OrderedDict()
        self._files: OrderedDict[bytes, int] = OrderedDict()
        self._family = family if family is not None else []
        self._family.append(self)

    def subtree(self, path: bytes = b"", *, hidden: Iterable[bytes] = ()) -> Tree:
        """A tree rooted at *path* of this one (a consistency group's), in
        the same family; *hidden* paths (relative to it) are out of its reach."""
        root = os.path.join(self.root, os.fsdecode(path)) if path else self.root
        return Tree(root, hidden=hidden, family=self._family)

    def close(self) -> None:
        self._forget_own()
        os.close(self.root_fd)
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
        if path.partition(b"/")[0] == RESERVED:
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

    def _file(self, path: bytes) -> int:
        fd = self._files.get(path)
        if fd is None:
            fd = self.open_regular(path, os.O_WRONLY)
            self._remember(self._files, path, fd)
        else:
            self._files.move_to_end(path)
        return fd

    # --- reads ---------------------------------------------------------------

    def lstat(self, path: bytes) -> os.stat_result:
        if not path:
            return os.stat(self.root_fd)
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

    def walk(self) -> Iterator[tuple[bytes, os.stat_result]]:
        """Every entry under the root (not the root itself) with its lstat:
        a directory before its children, names in order within a directory.
        Entries that vanish meanwhile are skipped."""
        pending = [b""]
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

    # --- mutations -------------------------------------------------------------

    def apply(self, op: tp.Operation) -> None:
        """Apply one replicated operation.

        Raises:
            OSError: the operation failed; the tree is as the failed system
                call left it.
        """
        handler = _APPLY.get(type(op))
        if handler is None:  # pragma: no cover - every Operation has one
            raise OSError(errno.ENOSYS, f"no handler for {type(op).__name__}")
        handler(self, op)
        if op.TIMES:
            for path, mtime_ns in op.mtimes():
                self._set_mtime(path, mtime_ns)

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

    def _set_mtime(self, path: bytes, mtime_ns: int) -> None:
        """The mtime of the entry itself (a symlink's own), atime untouched."""
        if not path:
            set_mtime(self.root_fd, b".", mtime_ns)
            return
        d, name = self.at(path)
        set_mtime(d, name, mtime_ns)

    def _write(self, op: tp.Write) -> None:
        fd = self._file(op.path)
        _pwrite_all(fd, op.data, op.offset)
        if op.mtime_ns != tp.NO_TIME:
            set_mtime(fd, None, op.mtime_ns)

    def _write_runs(self, op: tp.WriteRuns) -> None:
        fd = self._file(op.path)
        for offset, data in op.pieces():
            _pwrite_all(fd, data, offset)
        if op.mtime_ns != tp.NO_TIME:
            set_mtime(fd, None, op.mtime_ns)

    def _punch(self, op: tp.Punch) -> None:
        fd = self._file(op.path)
        for offset, length in op.run_list():
            punch(fd, offset, length)
        if op.mtime_ns != tp.NO_TIME:
            set_mtime(fd, None, op.mtime_ns)

    def _set_mode(self, fd: int, mode: int) -> None:
        os.chmod(proc_path(fd), stat.S_IMODE(mode))

    def _setattr(self, op: tp.SetAttr) -> None:
        if op.fields & tp.ATTR_SIZE:
            os.ftruncate(self._file(op.path), op.size)
        if op.fields & (tp.ATTR_UID | tp.ATTR_GID | tp.ATTR_MODE | tp.ATTR_TIMES):
            with self.entry(op.path) as fd:
                target = proc_path(fd)
                if op.fields & (tp.ATTR_UID | tp.ATTR_GID):
                    uid = op.uid if op.fields & tp.ATTR_UID else -1
                    gid = op.gid if op.fields & tp.ATTR_GID else -1
                    os.chown(target, uid, gid)
                if op.fields & tp.ATTR_MODE:
                    self._set_mode(fd, op.mode)
                if op.fields & tp.ATTR_TIMES:
                    os.utime(target, ns=(op.atime_ns, op.mtime_ns))  # a symlink's own: the fd names it
        if op.fields & tp.ATTR_MTIME:
            self._set_mtime(op.path, op.mtime_ns)

    def _own(self, path: bytes, mode: int, uid: int, gid: int) -> None:
        """Give a new entry its owner, then its exact mode (chown may clear
        set-id bits, so the mode goes last)."""
        with self.entry(path) as fd:
            os.chown(proc_path(fd), uid, gid)
            if not stat.S_ISLNK(os.stat(fd).st_mode):
                self._set_mode(fd, mode)

    def _create(self, op: tp.Create) -> None:
        d, name = self.at(op.path)
        self.forget(op.path)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     stat.S_IMODE(op.mode), dir_fd=d)
        try:
            os.fchown(fd, op.uid, op.gid)
            os.fchmod(fd, stat.S_IMODE(op.mode))
        except BaseException:
            os.close(fd)
            raise
        self._remember(self._files, op.path, fd)

    def _mknod(self, op: tp.MkNod) -> None:
        d, name = self.at(op.path)
        self.forget(op.path)
        os.mknod(name, op.mode, op.rdev, dir_fd=d)
        self._own(op.path, op.mode, op.uid, op.gid)

    def _mkdir(self, op: tp.MkDir) -> None:
        d, name = self.at(op.path)
        os.mkdir(name, stat.S_IMODE(op.mode), dir_fd=d)
        self._own(op.path, op.mode, op.uid, op.gid)

    def _unlink(self, op: tp.Unlink) -> None:
        d, name = self.at(op.path)
        self.forget(op.path)
        os.unlink(name, dir_fd=d)

    def _rmdir(self, op: tp.RmDir) -> None:
        d, name = self.at(op.path)
        self.forget_all()
        d, name = self.at(op.path)
        os.rmdir(name, dir_fd=d)

    @contextlib.contextmanager
    def _held_parent(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """Like ``at``, with a descriptor of its own: resolving a second
        path may evict (and close) cached ones."""
        d, name = self.at(path)
        fd = os.dup(d)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def _rename(self, op: tp.Rename) -> None:
        self.forget_all()
        with self._held_parent(op.old) as (src_dir, src):
            dst_dir, dst = self.at(op.new)
            if op.flags:
                renameat2(src_dir, src, dst_dir, dst, op.flags)
            else:
                os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        self.forget_all()

    def _link(self, op: tp.Link) -> None:
        with self._held_parent(op.target) as (src_dir, src):
            dst_dir, dst = self.at(op.new)
            os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)

    def _symlink(self, op: tp.Symlink) -> None:
        d, name = self.at(op.path)
        self.forget(op.path)
        os.symlink(op.target, name, dir_fd=d)
        os.chown(name, op.uid, op.gid, dir_fd=d, follow_symlinks=False)

    def _setxattr(self, op: tp.SetXattr) -> None:
        with self.entry(op.path) as fd:
            os.setxattr(proc_path(fd), op.name, op.value)

    def _removexattr(self, op: tp.RemoveXattr) -> None:
        with self.entry(op.path) as fd:
            os.removexattr(proc_path(fd), op.name)

    def _keepxattrs(self, op: tp.KeepXattrs) -> None:
        keep = set(op.name_list())
        with self.entry(op.path) as fd:
            where = proc_path(fd)
            for name in os.listxattr(where):
                if os.fsencode(name) in keep:
                    continue
                try:
                    os.removexattr(where, name)
                except OSError as exc:  # one this host's kernel or policy keeps (security.*): not ours to drop
                    if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.ENODATA):
                        raise

    def _fsync(self, op: tp.Fsync) -> None:
        if op.whole:
            self.sync()
            return
        with self.entry(op.path) as entry:
            mode = os.fstat(entry).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                return  # a node's data is not ours to flush; its entry is flushed with its directory
            fd = os.open(proc_path(entry), os.O_RDONLY | os.O_CLOEXEC)
        try:
            (os.fdatasync if op.datasync else os.fsync)(fd)
        finally:
            os.close(fd)


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


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


_APPLY = {
    tp.Write: Tree._write, tp.WriteRuns: Tree._write_runs, tp.Punch: Tree._punch, tp.SetAttr: Tree._setattr,
    tp.Create: Tree._create,
    tp.MkNod: Tree._mknod, tp.MkDir: Tree._mkdir, tp.Unlink: Tree._unlink,
    tp.RmDir: Tree._rmdir, tp.Rename: Tree._rename, tp.Link: Tree._link, tp.KeepXattrs: Tree._keepxattrs,
    tp.Symlink: Tree._symlink, tp.SetXattr: Tree._setxattr,
    tp.RemoveXattr: Tree._removexattr, tp.Fsync: Tree._fsync, tp.Purge: _purge, tp.Remove: _remove,
}
