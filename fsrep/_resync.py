"""Bringing a stale replica back: quick resync from the dirty set; when
tracking cannot say what differs, from a common snapshot
(``_from_snapshot``), else a checksum or a full resync.

How quick resync works (clients keep reading and writing throughout):

1. Directories first, shallowest first, in batches of one depth whose
   listings are asked for at once. For a dirty directory the replica's
   entries are listed at a point of the operation stream (ListDir); then the
   primary's entries are compared with them and the fix-ups are queued, a
   bounded number of entries a step: Remove what the primary no longer has,
   create what the replica lacks (new files get all their regions dirty, new
   directories become dirty themselves), note size or attribute differences
   as dirty metadata; the directory is then clean. While it was dirty, no
   replicated operation touched it (the splitter keeps every mutation under
   a dirty directory local), so the listing is still the replica's truth;
   a client's change to it meanwhile marks it again, and it is compared
   again.
2. Then data: for each dirty file, each run of dirty regions is read and
   queued and marked clean in one step. A client write that lands before that
   step is in the data read; one that lands after finds the region clean and
   is replicated behind it in sequence order — so no write racing the copy of
   its region is lost. The frames carry the file's mtime as of that step.
   Dirty metadata (times too) goes last, from a fresh lstat.
3. When acks have caught up and nothing is dirty (checked in the same step
   that switches state), the group is InSync.

A checksum resync (``fsrep-resync --mode checksum``, for when tracking
cannot be trusted) first marks every directory dirty, so the namespace is
compared in full; then, before copying, it compares every regular file
region by region: in one step it digests a run of regions here and asks the
secondary for the digests of the same regions at that point of the stream;
regions whose digests differ become dirty and are copied like any other.

Caveats:
- An entry created or renamed into a dirty directory is copied whole.
- A hard link made while out of sync (or a hard-linked file renamed) turns
  the resync into a full one: which name the replica holds is not tracked.
"""

from __future__ import annotations

import errno
import functools
import heapq
import logging
import os
import stat
from collections.abc import Callable, Sequence

import trio

import tracking
import transport as tp

from ._copying import MAX_IN_FLIGHT, attributes, creation, xattrs
from ._from_snapshot import based_on_snapshot
from ._fullsync import full_resync
from ._progress import ResyncRun
from ._reserved import is_staged, staged
from ._restore import restore
from ._sparse import clone_seconds, next_data
from ._stream import ResyncStream
from ._tree import Tree
from ._verify import Verification

log = logging.getLogger(__name__)
CHUNK_REGIONS = 256  # 1 MiB: the longest run one step copies
MAX_RUNS_PER_STEP = 64  # dirty runs of one file copied in one step: one descriptor, one WriteRuns frame
DIRECTORY_BATCH = 64  # directories whose listings are asked for at once
ENTRIES_PER_STEP = 512  # entries a walk or a directory's comparison looks at between letting clients in
CONTENDED = 1  # comparisons of a directory cut short by clients' changes before its next holds them
MAX_FILE = 2**63  # no file reaches past this offset: a hole is punched at most up to it


async def resync(stream: ResyncStream, tree: Tree, locate: Callable[[int], bytes | None] | None,
                 run: ResyncRun) -> None:
    """Run *run*: quick (or checksum) when the dirty set can be trusted,
    full when asked or when it cannot.

    Raises:
        LinkDown: the link failed; the group stays OutOfSync (stale).
    """
    if run.restore and not run.restored:
        await restore(stream, tree, run)
    if run.mode == "full" and not stream.dirty.everything:
        stream.mark_everything_dirty(f"full resync requested ({run.reason})")
    if (stream.dirty.everything or run.mode == "snapshot") and run.mode in ("quick", "snapshot") and not run.based:
        # Once per run: what a snapshot cannot say either (a hard link changed) ends in a full resync.
        if await based_on_snapshot(stream, tree, run):
            await QuickResync(stream, tree, locate, run).run()
            return
        if run.mode == "snapshot" and not stream.dirty.everything:
            stream.mark_everything_dirty(f"no common snapshot to resync from ({run.reason})")
    directories: list[tuple[int, bytes]] = []
    if stream.dirty.everything and run.mode != "full":
        directories, hard_links = await _scan_directories(tree)
        if not hard_links:
            # Never silently in sync, never a needless copy: compare everything by digest, clients writing on.
            log.info("group %s: checksum resync of the whole tree (%s)", stream.record.id, stream.dirty.reason)
            await QuickResync(stream, tree, locate, run, directories).run()
            return
    if stream.dirty.everything:
        log.info("group %s: full resync (%s); new changes wait until it is done", stream.record.id, stream.dirty.reason)
        with stream.holding_mutations():
            await full_resync(stream, tree, run)
        return
    if run.mode == "checksum":
        directories, _ = await _scan_directories(tree)
    await QuickResync(stream, tree, locate, run, directories).run()


async def _scan_directories(tree: Tree) -> tuple[list[tuple[int, bytes]], bool]:
    """Every directory (backing inode, path), and whether any other entry
    has hard links (which a digest comparison cannot pair up).

    The walk lets clients in every ENTRIES_PER_STEP entries. What they change
    meanwhile is marked dirty as they change it (and a directory moved
    where the walk had been is found again by comparing its new parent),
    so the list need not be one moment's."""
    directories = [(tree.lstat(b"").st_ino, b"")]
    hard_links = False
    for count, (path, st) in enumerate(tree.walk(), 1):
        if stat.S_ISDIR(st.st_mode):
            directories.append((st.st_ino, path))
        elif st.st_nlink > 1:
            hard_links = True
        if count % ENTRIES_PER_STEP == 0:
            await trio.lowlevel.checkpoint()
    return directories, hard_links


class QuickResync:
    def __init__(self, stream: ResyncStream, tree: Tree, locate: Callable[[int], bytes | None] | None, run: ResyncRun,
                 directories: Sequence[tuple[int, bytes]] = ()) -> None:
        self.stream = stream
        self.directories = directories
        self.created: set[int] = set()  # files this run created on the replica: their holes need no copy
        self.dirty = stream.dirty
        self.tree = tree
        self.locate = locate  # where the mount last saw a backing inode, relative to the group
        self.progress = run
        self.bytes_sent = 0
        self.started = 0.0
        self._by_inode: dict[int, bytes] | None = None
        self._queue: list[tuple[int, bytes, int]] = []  # dirty directories to compare: (depth, path, inode), a heap
        self._dirs_seen = 0  # DirtySet.dirs_added when the queue last held every dirty directory
        self._seen_files: dict[int, tuple[bytes, int, int]] = {}  # checksum mode: the files to compare
        self._contended: dict[int, int] = {}  # directory inode -> its comparisons a client's change cut short
        self._staged: dict[str, tuple[int, bytes]] = {}  # clone backups the replica holds now: name -> (inode, path)

    async def run(self) -> None:
        stream = self.stream
        verify = bool(self.directories)
        for ino, path in self.directories:  # checksum: the whole namespace gets compared
            self.dirty.mark_dir(ino, path)
        say = log.debug if self.progress.routine else log.info
        say("group %s: %s resync of %d dirty directories and %d files (%d dirty bytes)", stream.record.id,
                 self.progress.mode, len(self.dirty.dirs()), len(self.dirty.files()), self.dirty.dirty_bytes)
        stream.begin_resync(f"{self.progress.mode} resync: {self.progress.reason}")
        self.started = trio.current_time()
        await self._stage_backups()
        while True:
            await trio.lowlevel.checkpoint()  # a pass that finds nothing to wait for still lets clients in
            if self.dirty.dir_count:
                await self._directories()
            elif stream.to_compare:
                await self._compare_queued()
            elif verify:
                await Verification(self.stream, self.tree, self.progress).run(self._regular_files())
                verify = False
                self.dirty.clean_everything()  # every file was compared: what differs is marked
            elif self.dirty.files():
                await self._files()
            elif self._staged:
                self._unstage()
            elif await stream.finish_resync():
                break
        if stream.clone_backups is not None:
            stream.clone_backups.prune(self.dirty.clone_backups())
        stream.ran(self.bytes_sent, trio.current_time() - self.started)
        say("group %s: %s resync complete: %d bytes of data in %.1fs%s", stream.record.id, self.progress.mode,
                 self.bytes_sent, trio.current_time() - self.started,
                 f"; {self.progress.checked_bytes} bytes compared by digest, "
                 f"{self.progress.mismatched_bytes} differed" if self.directories else "")

    # --- checksum mode -------------------------------------------------------------

    def _regular_files(self) -> list[tuple[bytes, int, int]]:
        """(path, inode, size) of each regular file (each inode once), as
        the comparison of directories last saw them: every directory was
        compared, so no walk of the tree is needed. A file moved since is
        copied instead of compared (``_uncompared``)."""
        return sorted(self._seen_files.values())

    # --- finding entries ---------------------------------------------------------

    def resolve(self, ino: int) -> bytes | None:
        """The current path of backing inode *ino*, or None if it is gone."""
        found = self._lookup(ino)
        return None if found is None else found[0]

    def _lookup(self, ino: int) -> tuple[bytes, os.stat_result] | None:
        """The current path of backing inode *ino* and its lstat, or None
        if it is gone."""
        hint = self.dirty.hint(ino)
        candidates = [hint]
        if self.locate is not None:
            candidates.append(self.locate(ino))
        if hint == tracking.UNNAMED:  # changed through a name that is gone: find another of its hard links
            candidates.append(self._names().get(ino))
        for path in candidates:
            if path is None or path == tracking.UNNAMED:
                continue
            try:
                st = self.tree.lstat(path)
            except OSError:
                continue
            if st.st_ino == ino:
                return path, st
        return None

    def _names(self) -> dict[int, bytes]:
        """A name of every regular file of the tree, by inode: one walk per
        run, made only for files changed while no name of theirs was known."""
        if self._by_inode is None:
            self._by_inode = {}
            for path, st in self.tree.walk():
                if stat.S_ISREG(st.st_mode):
                    self._by_inode.setdefault(st.st_ino, path)
            log.info("group %s: searched the tree for files changed under a removed name (%d files)",
                     self.stream.record.id, len(self._by_inode))
        return self._by_inode

    # --- directories -------------------------------------------------------------------

    async def _directories(self) -> None:
        """Compare one batch of dirty directories with the replica's.

        Shallowest first, so a directory is compared only once the replica
        holds its path (its dirty parent, compared before it, created it
        there). The batch is every queued directory of the smallest depth,
        up to DIRECTORY_BATCH: their listings are asked for at once (one
        round trip for all) and each is reconciled (in steps) as its
        listing comes. Directories of one depth are never inside each
        other, so one's fix-ups cannot touch another's entries.

        The cost is bounded per directory: a heap of dirty directories by
        the depth of their path hint, one lstat to find each, and a rescan
        of the dirty set only when something other than this run made a
        directory dirty (or the heap ran dry with some left) — never a scan
        per directory."""
        batch = self._next_batch()
        asked = [(path, ino, self.stream.ask_listing(path)) for path, ino in batch]
        for path, ino, listing in asked:
            secondary = await listing()
            if not self.dirty.dir_dirty(ino):
                continue
            if self.resolve(ino) != path:
                continue  # moved meanwhile: its new parent is dirty (or its hint is new); it is queued again
            entries = await self._reconcile_converging(ino, path, secondary)
            if entries is None:  # moved or changed meanwhile: queued again where it is now
                if (where := self.resolve(ino)) is not None:
                    heapq.heappush(self._queue, (_depth(where), where, ino))
                continue
            self.progress.compared_directory(entries, trio.current_time())
        await self.stream.throttle(MAX_IN_FLIGHT)

    def _next_batch(self) -> list[tuple[bytes, int]]:
        """Up to DIRECTORY_BATCH dirty directories of the smallest depth:
        (path, inode), each found where it is now."""
        if self.dirty.dirs_added != self._dirs_seen or not self._queue:
            self._requeue()
        batch: list[tuple[bytes, int]] = []
        taken: set[int] = set()
        depth = None
        while self._queue and len(batch) < DIRECTORY_BATCH and depth in (None, self._queue[0][0]):
            hinted, _, ino = heapq.heappop(self._queue)
            if ino in taken or not self.dirty.dir_dirty(ino):
                continue  # compared already (a directory can be queued twice)
            found = self._lookup(ino)
            if found is None or not stat.S_ISDIR(found[1].st_mode):
                self.dirty.clean_dir(ino)  # gone (its parent was marked then), or its number reused
                continue
            path = found[0]
            if _depth(path) != hinted:  # moved since it was queued: back in its place
                heapq.heappush(self._queue, (_depth(path), path, ino))
                continue
            depth = hinted
            taken.add(ino)
            batch.append((path, ino))
        return batch

    def _requeue(self) -> None:
        """Queue every dirty directory by the depth of its path hint."""
        self._queue = []
        for ino in self.dirty.dirs():
            hint = self.dirty.hint(ino) or b""
            self._queue.append((_depth(hint), hint, ino))
        heapq.heapify(self._queue)
        self._dirs_seen = self.dirty.dirs_added

    def _mark_dir(self, ino: int, path: bytes) -> None:
        """Mark a directory this run created dirty, and queue it: no rescan
        needed for what the run itself did."""
        before = self.dirty.dirs_added
        self.dirty.mark_dir(ino, path)
        if self._dirs_seen == before:
            self._dirs_seen = self.dirty.dirs_added
        heapq.heappush(self._queue, (_depth(path), path, ino))

    async def _reconcile_converging(self, ino: int, path: bytes, secondary: dict[bytes, tp.DirEntry]) -> int | None:
        """``_reconcile``, with clients' changes held once a directory's
        comparisons were cut short CONTENDED times in a row by them: a
        directory that clients keep changing (a spool, a log directory)
        would otherwise be compared again for as long as they write, each
        time with more to send, and the resync would never end. The pause
        is one comparison of that directory (local work: its fix-ups are
        queued, not awaited); the replica's listing needs no new look, as
        no client change reaches the replica's copy of a dirty directory."""
        tries = self._contended.get(ino, 0)
        if tries < CONTENDED:
            entries = await self._reconcile(ino, path, secondary)
        else:
            log.info("group %s: directory %r changed while it was compared; comparing it again with clients' "
                     "changes held", self.stream.record.id, "/" + path.decode(errors="replace"))
            with self.stream.holding_mutations():
                entries = await self._reconcile(ino, path, secondary)
        if entries is None and self.resolve(ino) == path:
            self._contended[ino] = tries + 1
        else:
            self._contended.pop(ino, None)
        return entries

    async def _reconcile(self, ino: int, path: bytes, secondary: dict[bytes, tp.DirEntry]) -> int | None:
        """Queue the fix-ups that make the replica's directory match; returns
        how many entries the primary's has, or None when the directory
        moved or was changed meanwhile (it stays dirty, to be compared
        again).

        ENTRIES_PER_STEP entries a step, letting clients in between, so a
        directory of a million entries does not stop the mount. That is
        safe because while the directory is dirty no replicated operation
        touches it: a client's change to it stays local and marks it
        again, which the count of marks (``DirtySet.dir_marks``) shows at
        the end; and a move of it shows in the check after each step."""
        marked = self.dirty.dir_marks(ino)
        marks = tracking.Marks(dirs=((ino, path),))  # a fix-up lost with the link: compare it again
        send = functools.partial(self.stream.send, marks=marks)
        names = sorted(self.tree.listdir(path))
        for child in sorted(_join(path, name) for name in set(secondary) - set(names)):
            send(lambda seq, child=child: tp.Remove(seq=seq, path=child))
        heads = self.dirty.heads_dirty(ino)  # after a crash: every file's first extent and metadata may differ
        for start in range(0, len(names), ENTRIES_PER_STEP):
            if start:
                await trio.lowlevel.checkpoint()
                if self.resolve(ino) != path:
                    return None  # moved: what was queued so far went where it was; the rest waits for the next look
            for name in names[start:start + ENTRIES_PER_STEP]:
                child = _join(path, name)
                try:
                    st = self.tree.lstat(child)
                except FileNotFoundError:  # gone since the listing (a client's change: it is marked)
                    if name in secondary:
                        send(lambda seq, child=child: tp.Remove(seq=seq, path=child))
                    continue
                self._compare_entry(child, st, secondary.get(name), heads, marks)
        if self.dirty.dir_marks(ino) != marked:
            return None  # a client changed it meanwhile: compared again
        self.dirty.clean_dir(ino)
        self.dirty.mark_meta(ino, path)  # the directory's own times changed with its entries
        return len(names)

    def _compare_entry(self, child: bytes, st: os.stat_result, theirs: tp.DirEntry | None, heads: bool,
                       marks: tracking.Marks) -> None:
        """Queue the fix-up of one entry, or mark what of it differs."""
        if self.directories and stat.S_ISREG(st.st_mode):  # checksum mode: compared once directories are done
            self._seen_files[st.st_ino] = (child, st.st_ino, st.st_size)
        same_kind = theirs is not None and stat.S_IFMT(theirs.mode) == stat.S_IFMT(st.st_mode)
        if not same_kind or stat.S_ISLNK(st.st_mode):
            if theirs is not None:
                self.stream.send(lambda seq: tp.Remove(seq=seq, path=child), marks)
            self._create(child, st, marks)
            return
        assert theirs is not None
        if heads and stat.S_ISREG(st.st_mode):
            size = max(st.st_size, theirs.size)
            self.dirty.mark_regions(st.st_ino, child, tracking.regions_for(0, min(size, tracking.EXTENT_SIZE)))
            if theirs.size > tracking.EXTENT_SIZE or st.st_size > tracking.EXTENT_SIZE:
                low, high = sorted((theirs.size, st.st_size))
                self.dirty.mark_regions(st.st_ino, child, tracking.regions_for(low, high - low))
            self.dirty.mark_meta(st.st_ino, child)
        elif stat.S_ISREG(st.st_mode) and theirs.size != st.st_size:
            low, high = sorted((theirs.size, st.st_size))
            self.dirty.mark_regions(st.st_ino, child, tracking.regions_for(low, high - low))
            self.dirty.mark_meta(st.st_ino, child)
        elif (theirs.mode, theirs.uid, theirs.gid, theirs.mtime_ns) != \
                (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns):
            self.dirty.mark_meta(st.st_ino, child)

    def _create(self, path: bytes, st: os.stat_result, marks: tracking.Marks) -> None:
        send, mode = functools.partial(self.stream.send, marks=marks), st.st_mode
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            # Which name the replica holds this inode under is not tracked: compare everything instead
            # of breaking the hard link into two files.
            reason = f"a hard link ({path!r}) changed while out of sync"
            self.dirty.mark_everything(reason)
            raise tp.LinkDown(reason)
        cloned = self.dirty.take_clone(st.st_ino) if stat.S_ISREG(mode) else None
        if cloned is not None and st.st_size:
            staged = self._staged.get(cloned.backup)
            self._replay_clone(cloned.src if staged is None else staged[1], path, st, marks)
            return
        send(creation(self.tree, path, st))
        self.stream.to_compare.pop(st.st_ino, None)  # new there: nothing to compare it with, it is copied
        if stat.S_ISDIR(mode):
            self._mark_dir(st.st_ino, path)
        elif stat.S_ISREG(mode) and st.st_size:
            self.dirty.mark_regions(st.st_ino, path, tracking.regions_for(0, st.st_size))
            self.created.add(st.st_ino)
        self.dirty.mark_meta(st.st_ino, path)

    def _replay_clone(self, src: bytes, path: bytes, st: os.stat_result, marks: tracking.Marks) -> None:
        """A file cloned while out of sync: the replica clones its own
        *src* (an empty file if it has none), and the copy is compared by
        digest before any of it is sent — its regions stay dirty until the
        comparison finds them equal."""
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        self.stream.send(lambda seq: tp.Clone(seq=seq, src=src, path=path, mode=mode, uid=uid, gid=gid,
                                              flags=tp.CLONE_REPLAY), marks).grace = clone_seconds(st.st_size)
        self.stream.to_compare[st.st_ino] = path
        self.dirty.mark_meta(st.st_ino, path)
        self.progress.replayed_clone(st.st_size)
        log.info("group %s: %r, cloned from %r while out of sync, is cloned on the replica from its %r and "
                 "compared by digest: only what differs is sent", self.stream.record.id, path, src, src)

    # --- clone backups (``_clone_backups``) --------------------------------------------

    async def _stage_backups(self) -> None:
        """Before anything else of the run: put each clone backup the clone
        records name on the replica, cloned there from its copy of the
        source (still as the last sync left it), compared by digest and
        what differs sent — so the clones are replayed from it. Staged
        backups a run cut short left dirty are forgotten first: the replica
        emptied its staging directory at this run's ResyncBegin."""
        if self.tree.staging is None:
            return  # no backup directory: nothing is ever staged
        for ino in self.dirty.files():
            if is_staged(self.dirty.hint(ino) or b""):
                self.dirty.forget_file(ino)
        backups = self.dirty.clone_backups()
        if not backups:
            return
        marks = tracking.Marks()  # lost with the link: the next run stages it again
        for name, src in sorted(backups.items()):
            path = staged(name)
            try:
                st = self.tree.lstat(path)
            except OSError:
                continue  # lost here (made before a crash): its clones are replayed from their sources
            self.stream.send(lambda seq, src=src, path=path, st=st: tp.Clone(
                seq=seq, src=src, path=path, mode=0o600, uid=st.st_uid, gid=st.st_gid, flags=tp.CLONE_REPLAY),
                marks).grace = clone_seconds(st.st_size)
            self.dirty.mark_regions(st.st_ino, path, tracking.regions_for(0, max(st.st_size, 1)))
            self.dirty.mark_meta(st.st_ino, path)
            self._staged[name] = (st.st_ino, path)
        verification = Verification(self.stream, self.tree, self.progress, settle=True)
        for ino, path in self._staged.values():
            await verification.run([(path, ino, self.tree.lstat(path).st_size)])
            await self._file(ino, namespace_first=False)
        log.info("group %s: %d clone backups staged on the replica; the clones made while out of sync are replayed "
                 "from them", self.stream.record.id, len(self._staged))

    def _unstage(self) -> None:
        """The clones are replayed: the replica's staged backups go."""
        for _, path in self._staged.values():
            self.stream.send(lambda seq, path=path: tp.Remove(seq=seq, path=path))
        self._staged.clear()

    async def _compare_queued(self) -> None:
        """Compare the queued files (``ResyncStream.to_compare``) by digest,
        settling: what is equal is clean, what differs stays dirty for the
        file phase. A file gone or moved is copied where it is instead."""
        queue = self.stream.to_compare
        verification = Verification(self.stream, self.tree, self.progress, settle=True)
        for ino in list(queue):
            if self.dirty.dir_count:
                return  # namespace first
            found = self._lookup(ino)
            if found is not None and stat.S_ISREG(found[1].st_mode):
                await verification.run([(found[0], ino, found[1].st_size)])
            queue.pop(ino, None)

    # --- data and attributes ------------------------------------------------------------

    async def _files(self) -> None:
        for ino in self.dirty.files():
            if self.dirty.dir_count or self.stream.to_compare:
                return  # namespace first: a file's directory may have gone dirty again; compared before copied
            await self._file(ino)
            await trio.lowlevel.checkpoint()  # many small files: clients and acks get their turn

    async def _file(self, ino: int, *, namespace_first: bool = True) -> None:
        cursor = 0
        known = None  # the stretch of data last found: kept from step to step (see _copy)
        while next(self.dirty.ranges(ino, cursor), None) is not None:
            step = self._copy(ino, cursor, known)
            if step is None:
                break  # the file is gone, or no longer a regular file (its metadata may still be dirty)
            cursor, more, copied, known = step
            await self.stream.throttle(MAX_IN_FLIGHT)
            pause = self.progress.pause_for(copied, trio.current_time())
            if pause:
                await trio.sleep(pause)
            if self.dirty.dir_count and namespace_first:
                return  # namespace first: a file's directory may have gone dirty again
            if not more:
                break
        if self.dirty.meta_dirty(ino):
            self._attributes(ino)

    def _copy(self, ino: int, cursor: int,
              known: tuple[int, int] | None) -> tuple[int, bool, int, tuple[int, int] | None] | None:
        """Copy the dirty regions of one file from region *cursor* on, as
        far as one step goes, and mark them clean — one step, through one
        descriptor. Data goes in one WriteRuns frame (at most CHUNK_REGIONS
        regions of it, in at most MAX_RUNS_PER_STEP runs); holes, however
        large, in one Punch frame, so a sparse file stays sparse and a hole
        costs no read. Returns (where the next step starts, whether dirty
        regions are left after it, data bytes sent, the stretch of data last
        found), or None when the file is gone (or no longer a regular file).

        *known*, the stretch of data the last step found, spares asking
        again: finding a hole costs tmpfs a look at every page up to it. A
        client's change since can only make a byte of it read as a zero
        (a truncate and regrow), which is then copied as data: the same
        bytes, less sparse."""
        path = self.resolve(ino)
        if path is None:
            self.dirty.forget_file(ino)
            return None
        try:
            fd = self.tree.open_regular(path, os.O_RDONLY)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.EINVAL, errno.ELOOP):
                self.dirty.drop_regions(ino)  # its number now belongs to a directory or special file
            else:
                self.dirty.forget_file(ino)
            return None
        region = tracking.REGION_SIZE
        pieces: list[tuple[int, bytes]] = []
        holes: list[tuple[int, int]] = []  # region ranges [first, stop)
        done: list[tracking.RegionRange] = []
        data_regions = 0
        more = False
        try:
            mtime_ns = os.fstat(fd).st_mtime_ns  # the file's, as of the data this step reads: sent with it
            for run in self.dirty.ranges(ino, cursor):
                pos = run.first
                while pos < run.stop:
                    if data_regions >= CHUNK_REGIONS or len(pieces) >= MAX_RUNS_PER_STEP or \
                            len(holes) >= MAX_RUNS_PER_STEP:
                        more = True
                        break
                    if known is None or not known[0] <= pos * region < known[1]:
                        known = next_data(fd, pos * region)
                    data = None if known is None or known[0] >= run.stop * region else \
                        (max(known[0], pos * region), min(known[1], run.stop * region))
                    first_data = run.stop if data is None else data[0] // region
                    if first_data > pos:  # a hole up to the next data (or the run's end)
                        holes.append((pos, first_data))
                        done.append(tracking.RegionRange(pos, first_data - pos))
                        pos = first_data
                        continue
                    assert data is not None
                    end = min(run.stop, -(-data[1] // region), pos + CHUNK_REGIONS - data_regions)
                    chunk = os.pread(fd, (end - pos) * region, pos * region)
                    if chunk:
                        pieces.append((pos * region, chunk))
                    done.append(tracking.RegionRange(pos, end - pos))
                    data_regions += end - pos
                    pos = end
                if more:
                    cursor = pos
                    break
        finally:
            os.close(fd)
        marks = tracking.Marks(regions=tuple((ino, path, offset, len(data)) for offset, data in pieces))
        if pieces:  # one frame for all the runs: a frame's cost on both sides, not one per run
            self.stream.send(lambda seq: tp.WriteRuns.of(seq, path, pieces, mtime_ns), marks)
        punched = [(first * region, min(stop * region, MAX_FILE) - first * region) for first, stop in holes
                   if first * region < MAX_FILE]
        if punched and ino not in self.created:  # a file this run created is all holes there already
            self.stream.send(lambda seq: tp.Punch(seq=seq, path=path, runs=tp.pack_runs(punched), mtime_ns=mtime_ns),
                          tracking.Marks(regions=tuple((ino, path, offset, length) for offset, length in punched)))
        copied = sum(len(data) for _, data in pieces)
        if copied:
            self.bytes_sent += copied
            self.progress.copied(copied, trio.current_time())
        for regions in done:
            self.dirty.clean_regions(ino, regions)
        return cursor, more, copied, known

    def _attributes(self, ino: int) -> None:
        """Size, mode, owner, times and xattrs from a fresh lstat — one step."""
        path = self.resolve(ino)
        if path is None:
            self.dirty.forget_file(ino)
            return
        st = self.tree.lstat(path)
        send = functools.partial(self.stream.send, marks=tracking.Marks(meta=((ino, path),)))
        if stat.S_ISLNK(st.st_mode):  # a symlink's own owner and times: its mode is always 0777
            send(attributes(path, st, tp.ATTR_UID | tp.ATTR_GID | tp.ATTR_TIMES))
        else:
            size = tp.ATTR_SIZE if stat.S_ISREG(st.st_mode) else 0
            send(attributes(path, st, tp.ATTR_MODE | tp.ATTR_UID | tp.ATTR_GID | tp.ATTR_TIMES | size))
            for frame in xattrs(self.tree, path, drop_others=True):
                send(frame)
        self.dirty.clean_meta(ino)


def _depth(path: bytes) -> int:
    return path.count(b"/") + bool(path)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name
