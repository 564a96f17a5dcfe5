"""Split brain, the primary's side given up (``fsrep-resync --discard
primary``): the primary takes the replica's side of everything that
changed on either side since their newest common snapshot, clients
writing on.

How this works: what may differ is, by path, this side's record since the
snapshot (and its intercept log) plus the replica's (SnapshotChanges).
This side's part is copied out first, as plain files at the same paths
under ``STORE/.fsrep/divergent/<id>/<time>/`` (``_divergent_copy``), so
nothing is given up without a copy. Then each path is made as the replica
holds it — asked for with Fetch (kind, attributes, symlink target,
extended attributes, data a megabyte at a time) and ListDir — by system
calls on the mount itself, from worker threads: the kernel's caches,
open files and the mount's inode table stay right as for any client's
change, and a client's change meanwhile is ordered with the pull's as two
clients' would be. In SplitBrain those changes stay local and dirty; the
run then goes on as the resync from the snapshot that gives up the
secondary's side would (without its copy): what may differ crosses back,
so both sides end the same, InSync in a new generation. The data pulled
crosses the link twice; what diverged is small where this is used.

Caveats:
- Hard links of the replica are pulled as separate files.
- Holes the replica holds in data pulled become zeros here only where the
  file already held data; a file made here stays sparse.
- Under policy strict, changes during SplitBrain fail with EIO: refused.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import trio

import tracking
import transport as tp

from ._divergent_copy import keep
from ._progress import ResyncRun, RunRefused
from ._sparse import pwrite_all
from ._stream import ResyncStream
from ._tree import Tree

log = logging.getLogger(__name__)


class PullRefused(RunRefused):
    """The pull cannot start, or a change through the mount failed; the run
    ends with the reason (what was taken so far stays)."""


async def pull(stream: ResyncStream, tree: Tree, run: ResyncRun, sid: tracking.SnapshotId,
               theirs: tracking.PathChanges) -> bool:
    """Keep this side's changes since *sid*, then take the replica's side
    of everything that may differ: those and *theirs*, what the replica
    said changed there (see the module docstring). True once done.

    Raises:
        LinkDown: the link failed (what was pulled so far is dirty, and
            pulled again by the next run); PullRefused: it cannot start.
    """
    record = stream.record
    ours = tracking.by_path(stream.snapshots.may_differ(sid), lambda path: _names(tree, path))
    if ours is None:
        raise PullRefused(f"what changed here since {sid.name} cannot be told by path, so it cannot be kept; "
                          f"nothing was given up")
    union = tracking.PathChanges()
    for changes in (ours, theirs):
        for change in changes.walk():
            if change.flags:
                union.mark(change.path, change.flags)
            for r in change.runs:
                union.mark_regions(change.path, r)
    if not run.kept:  # once: a pull cut short by the link goes on, and what it took is no longer this side's
        into = stream.divergent_dir()
        entries, data = await trio.to_thread.run_sync(keep, tree, ours, into)
        run.kept, run.kept_side = str(into), "primary"
        log.warning("group %s: split brain resolved by giving up the primary's side: its %d entries (%d bytes of "
                    "data) changed since %s are kept on the primary in %s", record.id, entries, data, sid, into)
    puller = Puller(stream, Path(run.pull_into))
    try:
        for change in union.walk():
            await puller.path(change)
        await puller.finish()
    except OSError as exc:  # through the mount: what a client would get (a full disk, EIO under a fault)
        raise PullRefused(f"cannot take the secondary's side here: {exc}; what was taken so far stays, and "
                          f"'fsrep-resync --discard primary' goes on from there") from None
    run.pulled = True
    log.info("group %s: took the secondary's side of %d entries (%d bytes of data) since %s; sending back what "
             "may differ, so both sides end the same", record.id, puller.entries, puller.bytes, sid)
    return True


def _names(tree: Tree, path: bytes) -> list[bytes]:
    try:
        return tree.listdir(path)
    except OSError:
        return []


class Puller:
    """Makes paths of the mount as the replica holds them."""

    def __init__(self, stream: ResyncStream, root: Path) -> None:
        self.stream = stream
        self.root = root
        self.entries = self.bytes = 0
        self._made: list[bytes] = []  # subtrees made whole from the replica: their paths need nothing more
        self._dir_times: dict[bytes, tp.Fetched] = {}  # directories whose times are set last, deepest first

    def local(self, path: bytes) -> Path:
        return Path(os.fsdecode(os.path.join(os.fsencode(self.root), path))) if path else self.root

    async def fetch(self, path: bytes, offset: int = 0, length: int = 0) -> tp.Fetched:
        reply = await self.stream.ask(lambda seq: tp.Fetch(seq=seq, path=path, offset=offset, length=length),
                                      early=True)()
        assert isinstance(reply, tp.Fetched)
        return reply

    async def path(self, change: tracking.PathChange) -> None:
        path = change.path
        if any(path == made or path.startswith(made + b"/") for made in self._made):
            return
        theirs = await self.fetch(path)
        here = await trio.to_thread.run_sync(_lstat, self.local(path))
        if not theirs.found:
            if here is not None and path:
                await trio.to_thread.run_sync(_remove, self.local(path), here)
                self.entries += 1
            return
        if here is None or stat.S_IFMT(here.st_mode) != stat.S_IFMT(theirs.mode) or stat.S_ISLNK(theirs.mode) \
                or (not stat.S_ISDIR(theirs.mode) and not stat.S_ISREG(theirs.mode)):
            if not path:
                raise PullRefused("the secondary's group root is not a directory; nothing more was pulled")
            await self.make(path, theirs, here)
            return
        if stat.S_ISDIR(theirs.mode):
            if change.flags & (tracking.DIR | tracking.WHOLE):
                await self.directory(path)
        else:
            whole = bool(change.flags & tracking.WHOLE)
            spans = [(0, theirs.size)] if whole else [
                (r.first * tracking.REGION_SIZE, r.count * tracking.REGION_SIZE) for r in change.runs]
            if here.st_size < theirs.size:
                spans.append((here.st_size, theirs.size - here.st_size))
            await self.data(path, theirs.size, spans, made=False)
        await self.attributes(path, theirs)
        self.entries += 1

    async def directory(self, path: bytes) -> None:
        """The entries of directory *path*: those the replica lacks go, those
        only it has are made."""
        listing = await self.stream.ask_listing(path, early=True)()
        names = set(await trio.to_thread.run_sync(os.listdir, self.local(path)))
        for name in sorted(os.fsencode(n) for n in names):
            if name not in listing:
                child = self.local(_join(path, name))
                here = await trio.to_thread.run_sync(_lstat, child)
                if here is not None:
                    await trio.to_thread.run_sync(_remove, child, here)
                    self.entries += 1
        local = {os.fsencode(n) for n in names}
        for name in sorted(set(listing) - local):
            child = _join(path, name)
            theirs = await self.fetch(child)
            if theirs.found:
                await self.make(child, theirs, None)

    async def make(self, path: bytes, theirs: tp.Fetched, here: os.stat_result | None) -> None:
        """Make entry *path* (and all below) as the replica holds it."""
        where = self.local(path)
        if here is not None:
            await trio.to_thread.run_sync(_remove, where, here)
        mode = theirs.mode
        if stat.S_ISDIR(mode):
            await trio.to_thread.run_sync(os.mkdir, where, 0o700)
            listing = await self.stream.ask_listing(path, early=True)()
            for name in sorted(listing):
                child = _join(path, name)
                found = await self.fetch(child)
                if found.found:
                    await self.make(child, found, None)
        elif stat.S_ISREG(mode):
            await trio.to_thread.run_sync(_new_file, where)
            await self.data(path, theirs.size, [(0, theirs.size)], made=True)
        elif stat.S_ISLNK(mode):
            await trio.to_thread.run_sync(os.symlink, theirs.target, where)
        else:
            await trio.to_thread.run_sync(os.mknod, where, mode, theirs.rdev)
        await self.attributes(path, theirs)
        self._made.append(path)
        self.entries += 1

    async def data(self, path: bytes, size: int, spans: list[tuple[int, int]], *, made: bool) -> None:
        """Copy *spans* of file *path* from the replica, then give it the
        replica's *size*. A file *made* here skips runs of zeros (holes)."""
        where = self.local(path)
        fd = await trio.to_thread.run_sync(os.open, where, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for offset, length in _merged(spans, size):
                end = offset + length
                while offset < end:
                    got = await self.fetch(path, offset, min(tp.MAX_FETCH, end - offset))
                    if not got.found or not got.data:
                        break  # gone or shorter since it was asked: what changed there is pulled by the record
                    if not (made and got.data == bytes(len(got.data))):
                        await trio.to_thread.run_sync(pwrite_all, fd, got.data, offset)
                        self.bytes += len(got.data)
                    offset += len(got.data)
            await trio.to_thread.run_sync(os.ftruncate, fd, size)
        finally:
            os.close(fd)

    async def attributes(self, path: bytes, theirs: tp.Fetched) -> None:
        await trio.to_thread.run_sync(_attributes, self.local(path), theirs)
        if stat.S_ISDIR(theirs.mode):
            self._dir_times[path] = theirs
        else:
            await trio.to_thread.run_sync(_times, self.local(path), theirs)

    async def finish(self) -> None:
        """Directories' times last, deepest first: their entries changed
        them."""
        for path in sorted(self._dir_times, key=lambda p: -p.count(b"/") - bool(p)):
            await trio.to_thread.run_sync(_times, self.local(path), self._dir_times[path])


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


def _merged(spans: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    """*spans* within *size*, sorted, overlaps joined."""
    clipped = sorted((o, min(o + n, size)) for o, n in spans if o < size)
    start = end = -1
    for o, e in clipped:
        if o > end:
            if end > start:
                yield start, end - start
            start, end = o, e
        else:
            end = max(end, e)
    if end > start:
        yield start, end - start


def _lstat(where: Path) -> os.stat_result | None:
    try:
        return os.lstat(where)
    except FileNotFoundError:
        return None


def _remove(where: Path, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(where)
    else:
        os.unlink(where)


def _new_file(where: Path) -> None:
    os.close(os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def _attributes(where: Path, theirs: tp.Fetched) -> None:
    """Owner, then mode (chown may clear set-id bits), then extended
    attributes: the replica's, and none it lacks."""
    os.chown(where, theirs.uid, theirs.gid, follow_symlinks=False)
    if stat.S_ISLNK(theirs.mode):
        return
    os.chmod(where, stat.S_IMODE(theirs.mode))
    wanted = dict(theirs.xattr_list())
    for name in os.listxattr(where):
        if os.fsencode(name) not in wanted:
            try:
                os.removexattr(where, name)
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, errno.EPERM, errno.ENOTSUP):
                    raise
    for name, value in wanted.items():
        try:
            os.setxattr(where, name, value)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP):  # as the replica applies them: what it may not set
                raise


def _times(where: Path, theirs: tp.Fetched) -> None:
    os.utime(where, ns=(theirs.atime_ns, theirs.mtime_ns), follow_symlinks=False)

