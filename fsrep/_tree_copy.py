"""A consistency group's tree copied to another file system while clients
change it (``_move_across``): one whole copy, then catch-up passes over
what changed meanwhile, each run in a worker thread.

How this works: the copy mirrors the source path for path, and ``inodes``
maps each source inode to its copy's. That map is how a catch-up tells a
copy from an entry that took its name since (the name now holds another
inode), how hard links are linked again, and what the group's trackers
are rekeyed with at cutover. A catch-up is given the directories and files
a watch saw change, at their paths of the moment:
- a directory: each entry of the copy that is not the copy of the entry of
  that name in the source now is set aside, each source entry missing in
  the copy is taken back from aside (a rename) or copied (a directory with
  all it holds), and its attributes set; what is left aside is removed;
- a file: the regions changed are copied again (holes as the source has
  them), then its size and attributes set.
Both trees are reached through ``Tree``: no symlink is ever followed, and
nothing is written outside the target's root. Directories' times are set
last, deepest first, so making their entries leaves them as the source's.

Caveats:
- An entry renamed in the source is found again by its inode at its new
  name (a rename marks both directories, so both are in one catch-up),
  unless it moved out of a directory that was removed too: that one is
  copied again.
- An item whose path names another inode by the time it is copied (it was
  renamed or removed meanwhile) is handed back (``Pass.missed``); what
  moved it marked the directories concerned.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import transport as tp

from ._apply import mutate
from ._copying import attributes, creation, xattrs
from ._reserved import RESERVED
from ._sparse import COPY_CHUNK, copy_span, generation, proc_path
from ._tree import Tree

Region = tuple[int, int]  # (offset, length)
FileChange = tuple[int, bytes, list[Region]]  # (source inode, path, regions changed): its attributes are set too
# What a client's change in the source, under way while it is read, makes a read fail with (the entry went, moved,
# or changed its kind): the change is noted, so a later pass copies it. Anything else (ENOSPC, EIO) ends the copy.
RACED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EISDIR, errno.EINVAL, errno.ESTALE})


class Cancelled(Exception):
    """The copy was told to stop (an abort); what it made is removed by the caller."""


@dataclass(slots=True)
class Pass:
    """What one catch-up did."""

    copied: int = 0  # bytes of data
    missed_dirs: list[tuple[int, bytes]] = field(default_factory=list)  # (source inode, path)
    missed_files: list[tuple[int, bytes]] = field(default_factory=list)


class TreeCopy:
    """The copy of *source* in *target* (an empty directory, elsewhere)."""

    def __init__(self, source: Tree, target: Tree, *, cancelled: Callable[[], bool] = lambda: False,
                 copied: Callable[[int], None] = lambda n: None) -> None:
        self.source, self.target = source, target
        self.inodes: dict[int, int] = {}  # source st_ino -> target st_ino, for every entry copied
        self._links: dict[int, bytes] = {}  # source st_ino of a hard-linked file -> a path of its copy
        self._names: dict[int, bytes] = {}  # during a catch-up: the paths of the files it was given
        self._aside: dict[int, list[tuple[bytes, os.stat_result]]] = {}  # during one: copies set aside, by inode
        self._aside_fd: int | None = None
        self._seen: dict[int, tuple[int, int | None]] = {}  # source inode -> (ctime, generation) when last seen same
        self._cancelled, self._copied = cancelled, copied

    # --- the whole copy --------------------------------------------------------------

    def copy_all(self) -> int:
        """Copy everything (the root's attributes too); the bytes of data
        copied. Raises Cancelled, or OSError as the system calls (ENOSPC)."""
        root = self.source.lstat(b"")
        self.inodes[root.st_ino] = self.target.lstat(b"").st_ino
        copied = self._copy_tree(b"")
        self._set_attributes(b"", root, directory=True)
        self.target.sync()
        return copied

    def _copy_tree(self, top: bytes) -> int:
        """Copy what directory *top* holds (the directory itself is there)."""
        copied = 0
        directories: list[tuple[bytes, os.stat_result]] = []
        parent = None
        for path, st in self.source.walk(top):
            if self._cancelled():
                raise Cancelled()
            if path.rpartition(b"/")[0] != parent:  # clients rename meanwhile: no path cached across directories
                parent = path.rpartition(b"/")[0]
                self.source.forget_all()
            try:
                copied += self._copy_entry(path, st)
            except OSError as exc:
                if exc.errno not in RACED:
                    raise
                continue  # changed while it was copied: its directory was marked, a later pass copies it
            if stat.S_ISDIR(st.st_mode):
                directories.append((path, st))
        for path, st in reversed(directories):
            self._times(path, st)
        return copied

    def _copy_entry(self, path: bytes, st: os.stat_result) -> int:
        """Make *path* in the target as the source's entry *st*, with its
        data and attributes (a directory empty); the bytes copied."""
        mode = st.st_mode
        if not stat.S_ISDIR(mode) and st.st_nlink > 1 and self._link(path, st):
            return 0
        mutate(self.target, creation(self.source, path, st)(0))
        made = self.target.lstat(path).st_ino
        self.inodes[st.st_ino] = made
        self._seen[st.st_ino] = (st.st_ctime_ns, self._generation(path, st))
        copied = 0
        if stat.S_ISREG(mode):
            copied = self._copy_data(path, [(0, st.st_size)], fresh=True)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            self._links[st.st_ino] = path
        self._set_attributes(path, st, directory=stat.S_ISDIR(mode))
        return copied

    def _link(self, path: bytes, st: os.stat_result) -> bool:
        """Link *path* to the copy of its inode, when one is known and still
        at the path noted; whether it was."""
        other = self._links.get(st.st_ino) or self._names.get(st.st_ino)
        if other is None or other == path:
            return False
        try:
            if self.target.lstat(other).st_ino != self.inodes.get(st.st_ino):
                return False
        except FileNotFoundError:
            return False
        mutate(self.target, tp.Link(seq=0, target=other, new=path))
        return True

    def _copy_data(self, path: bytes, spans: Iterable[Region], *, fresh: bool) -> int:
        """Copy *spans* of file *path* (into a *fresh* copy: no holes to
        punch), then give the copy the source's size; the bytes copied."""
        src = self.source.open_regular(path, os.O_RDONLY)
        try:
            dst = self.target.writable(path)  # the tree's own: it closes it
            copied = 0
            for start, length in spans:
                offset, stop = start, start + length
                while offset < stop:
                    if self._cancelled():
                        raise Cancelled()
                    end = min(stop, offset + COPY_CHUNK)
                    n = copy_span(src, dst, offset, end, holes=not fresh)
                    copied += n
                    self._copied(n)
                    offset = end
            os.ftruncate(dst, os.fstat(src).st_size)
            return copied
        finally:
            os.close(src)

    def _set_attributes(self, path: bytes, st: os.stat_result, *, directory: bool) -> None:
        if stat.S_ISLNK(st.st_mode):  # a symlink has an owner and times of its own, no mode
            mutate(self.target, attributes(path, st, tp.ATTR_UID | tp.ATTR_GID)(0))
        else:
            mutate(self.target, attributes(path, st, tp.ATTR_MODE | tp.ATTR_UID | tp.ATTR_GID)(0))
            for frame in xattrs(self.source, path, drop_others=True):
                mutate(self.target, frame(0))
        if not directory:
            self._times(path, st)

    def _times(self, path: bytes, st: os.stat_result) -> None:
        mutate(self.target, attributes(path, st, tp.ATTR_TIMES)(0))

    # --- catching up -----------------------------------------------------------------

    def catch_up(self, dirs: Iterable[tuple[int, bytes]], files: Iterable[FileChange]) -> Pass:
        """Bring the copy up to what changed: directories *dirs* (source
        inode, path) and files *files* (``FileChange``: a directory's
        metadata comes as a file's).

        Directories in two rounds: first what no longer belongs in each
        is set aside (in the copy's reserved ``.fsrep``, never listed),
        then what is missing is made — taken back from aside when it is
        the copy of that inode, so a rename costs no copy; what is left
        aside is removed at the end."""
        done = Pass()
        files = list(files)
        self._names = {ino: path for ino, path, _ in files}  # a new hard link's other name is among them
        synced: list[tuple[bytes, os.stat_result]] = []
        try:
            pending = sorted(dirs, key=lambda item: item[1].count(b"/"))  # parents first
            for _ in range(2):  # again for those a rename from aside put in place
                missing: list[tuple[bytes, os.stat_result, dict[bytes, os.stat_result]]] = []
                for ino, path in pending:
                    self.source.forget_all()
                    try:
                        st = self._current(ino, path)
                        if st is None or not stat.S_ISDIR(st.st_mode):
                            done.missed_dirs.append((ino, path))
                            continue
                        missing.append((path, st, self._set_aside(path)))
                    except OSError as exc:
                        if exc.errno not in RACED:
                            raise
                        done.missed_dirs.append((ino, path))
                for path, st, wanted in missing:
                    done.copied += self._fill(st.st_ino, path, wanted, done)
                    try:
                        self._set_attributes(path, st, directory=True)
                    except OSError as exc:
                        if exc.errno not in RACED:
                            raise
                        done.missed_dirs.append((st.st_ino, path))
                        continue
                    synced.append((path, st))
                pending, done.missed_dirs = done.missed_dirs, []
            done.missed_dirs = pending
            for ino, path, regions in files:
                try:
                    st = self._current(ino, path)
                    if st is None:
                        done.missed_files.append((ino, path))
                    elif stat.S_ISDIR(st.st_mode):
                        self._set_attributes(path, st, directory=True)
                        synced.append((path, st))
                    else:
                        if stat.S_ISREG(st.st_mode) and regions:
                            done.copied += self._copy_data(path, regions, fresh=False)
                        self._set_attributes(path, st, directory=False)
                except OSError as exc:
                    if exc.errno not in RACED:
                        raise
                    done.missed_files.append((ino, path))
            for path, _ in sorted(synced, key=lambda item: -item[0].count(b"/")):
                with contextlib.suppress(FileNotFoundError):
                    self._times(path, self.source.lstat(path))
        finally:
            self._names = {}
            self._drop_aside()
        return done

    def _current(self, ino: int, path: bytes) -> os.stat_result | None:
        """The source entry at *path* when it is inode *ino* and its copy is
        at the same path (else None: it moved, or went)."""
        try:
            st = self.source.lstat(path)
            there = self.target.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if st.st_ino != ino or self.inodes.get(ino) != there.st_ino:
            return None
        return st

    def _set_aside(self, path: bytes) -> dict[bytes, os.stat_result]:
        """Set aside each entry of the copy's directory *path* that is not
        the copy of the source's entry of that name; the source's entries
        the copy lacks now, by name."""
        wanted: dict[bytes, os.stat_result] = {}
        for name in self.source.listdir(path):
            with contextlib.suppress(FileNotFoundError):  # gone since it was listed
                wanted[name] = self.source.lstat(_join(path, name))
        for name in self.target.listdir(path):
            child = _join(path, name)
            st = wanted.get(name)
            there = self.target.lstat(child)
            if st is not None and self.inodes.get(st.st_ino) == there.st_ino and self._same(child, st, there):
                del wanted[name]  # the copy of what is there
                continue
            aside = b"%d.%d" % (there.st_ino, len(self._aside))
            with self.target.held_parent(child) as (parent, entry):
                os.rename(entry, aside, src_dir_fd=parent, dst_dir_fd=self._aside_dir())
            self._aside.setdefault(there.st_ino, []).append((aside, there))
            self.target.forget_all()
        return wanted

    def _fill(self, ino: int, path: bytes, wanted: dict[bytes, os.stat_result], done: Pass) -> int:
        """Make the entries *wanted* in the copy's directory *path*: back
        from aside where one is the copy of that inode, else copied."""
        copied = 0
        for name, st in sorted(wanted.items()):
            child = _join(path, name)
            kept = self._aside.get(self.inodes.get(st.st_ino, -1))
            if kept and self._same(child, st, kept[-1][1], moved=kept[-1][0]):
                aside, _ = kept.pop()
                with self.target.held_parent(child) as (parent, entry):
                    os.rename(aside, entry, src_dir_fd=self._aside_dir(), dst_dir_fd=parent)
                self.target.forget_all()
                continue
            try:
                copied += self._copy_entry(child, st)
                if stat.S_ISDIR(st.st_mode):
                    copied += self._copy_tree(child)
                    self._times(child, st)
            except OSError as exc:
                if exc.errno not in RACED:
                    raise
                done.missed_dirs.append((ino, path))  # changed meanwhile: in the next round, or pass
        return copied

    def _same(self, path: bytes, st: os.stat_result, copy: os.stat_result, moved: bytes | None = None) -> bool:
        """Whether *copy* (the copy of inode ``st.st_ino``, at *path* or set
        aside as *moved*) is still the copy of the source's entry *st* at
        *path*: a file system gives a freed inode number again at once, so
        a number alone does not say (``rm a; touch b`` in one directory).
        Unchanged since it was copied (its ctime) it is; else its
        generation says, where the file system keeps one — else, for an
        entry set aside, its size and mtime (a rename changes neither)."""
        if stat.S_IFMT(st.st_mode) != stat.S_IFMT(copy.st_mode):
            return False
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(moved, dir_fd=self._aside_dir()) if moved is not None else self.target.readlink(path)
            return self.source.readlink(path) == target
        ctime, generation = self._seen.get(st.st_ino, (None, None))
        if ctime == st.st_ctime_ns:
            return True
        now = self._generation(path, st)
        if now is not None and generation is not None:
            if now != generation:
                return False
        elif moved is not None and (st.st_size, st.st_mtime_ns) != (copy.st_size, copy.st_mtime_ns):
            return False
        self._seen[st.st_ino] = (st.st_ctime_ns, now)
        return True

    def _generation(self, path: bytes, st: os.stat_result) -> int | None:
        """The generation of the source's regular file or directory *path*
        (FS_IOC_GETVERSION), None where the file system has none."""
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return None
        try:
            fd = (self.source.open_regular(path, os.O_RDONLY) if stat.S_ISREG(st.st_mode)
                  else self.source.open(path, os.O_RDONLY | os.O_DIRECTORY))
        except OSError:
            return None
        try:
            return generation(fd)
        finally:
            os.close(fd)

    def _aside_dir(self) -> int:
        """The directory entries are set aside in (``.fsrep`` of the copy's
        root: no client names it, no listing shows it), made when first needed."""
        if self._aside_fd is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(RESERVED, 0o700, dir_fd=self.target.root_fd)
            self._aside_fd = os.open(RESERVED, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     dir_fd=self.target.root_fd)
        return self._aside_fd

    def _drop_aside(self) -> None:
        """Remove what is left aside: it was removed in the source. The
        inodes that go with it leave the map: their numbers may be given
        again, on either side."""
        gone = {ino for ino, left in self._aside.items() if any(st.st_nlink <= 1 for _, st in left)}
        for name, st in [entry for left in self._aside.values() for entry in left]:
            if stat.S_ISDIR(st.st_mode) and self._aside_fd is not None:  # all it holds goes with it
                top = os.path.join(proc_path(self._aside_fd), os.fsdecode(name))
                for where, dirs, files in os.walk(top):
                    for entry in dirs + files:
                        with contextlib.suppress(OSError):
                            inner = os.lstat(os.path.join(where, entry))
                            if stat.S_ISDIR(inner.st_mode) or inner.st_nlink <= 1:
                                gone.add(inner.st_ino)
        if gone:
            for source in [s for s, t in self.inodes.items() if t in gone]:
                del self.inodes[source]
                self._seen.pop(source, None)
                self._links.pop(source, None)
        self._aside.clear()
        if self._aside_fd is not None:
            os.close(self._aside_fd)
            self._aside_fd = None
            root = self.target.root_fd
            _remove(root, RESERVED, os.stat(RESERVED, dir_fd=root, follow_symlinks=False))


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _remove(parent: int, name: bytes, st: os.stat_result) -> None:
    """Remove entry *name* of directory *parent* (a directory with all it holds)."""
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
    try:
        shutil.rmtree(os.fsdecode(name), dir_fd=fd)
    finally:
        os.close(fd)


def emptied(target: Tree) -> None:
    """Remove everything a copy made in *target* (an abort, or a crash
    during the copy), what it set aside too: its root is left, empty."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=target.root_fd)
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    for name in map(os.fsencode, names):
        _remove(target.root_fd, name, os.stat(name, dir_fd=target.root_fd, follow_symlinks=False))
    target.forget_all()
