"""The replica's side of pseudo snapshots, against a hand-written primary
over a real connection to ``fsrep serve``: a Snapshot frame starts a
record of what changes after it, SnapshotChanges answers it page by page,
the Welcome lists the snapshots, and they survive a restart and a kill -9
as far as the replica's saved position reached — never further. The
bookkeeping that needs no daemon (a full chain, a name taken twice, pages
of any size) runs on an in-process replica."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
import trio

import tracking
import transport as tp
from fsrep import _replica_snapshots
from fsrep._apply import apply
from fsrep._config import read_key
from fsrep._secondary import REPLICA_KIND, Replica, Secondary
from tests.conftest import Cluster

META, DIR, WHOLE = tracking.META, tracking.DIR, tracking.WHOLE
Change = tuple[bytes, int, list[tuple[int, int]]]
MAX_PAGES = 1000  # bound of every paging loop here
SAVED_WITHIN = 10.0  # seconds: the secondary checkpoints every 2

CORRUPT_CHAIN = (r" WARNING \S+: group \S+: cannot load the replica's snapshots from \S+\.snapshots \(.*\); dropping "
                 r"[\w, -]+: the primary falls back to an older common point or a checksum resync$")
DUPLICATE = (r" WARNING \S+: group \S+: a snapshot named twice exists already \(snapshot twice at seq 1 of generation "
             r"00000000\); keeping it and ignoring the one at seq 3$")
REPLICA_REPLACED = (r" WARNING \S+: group \S+: the replica directory \S+ was removed or replaced \(the replica was at "
                    r"seq \d+\); starting an empty replica at seq 0, which the primary fills with a baseline$")


# --- a hand-written primary -------------------------------------------------------------------------------------


async def _connect(cluster: Cluster, group: bytes) -> tuple[tp.Connection, tp.Welcome]:
    return await tp.open_primary_connection("127.0.0.1", cluster.secondary.port, read_key(str(cluster.key)),
                                            group, timeout=5)


async def _reply(conn: tp.Connection) -> tp.Frame:
    with trio.fail_after(10):
        reply = await conn.receive_event()
    assert not isinstance(reply, tp.Nack), f"the secondary refused seq {reply.seq}: {reply.message}"
    return reply


async def _send(conn: tp.Connection, *ops: tp.Operation) -> None:
    """Send *ops* and wait until the last is acknowledged."""
    for op in ops:
        conn.enqueue(op)
    await conn.flush()
    while not isinstance(reply := await _reply(conn), tp.Ack) or reply.seq < ops[-1].seq:
        pass


async def _changes(conn: tp.Connection, name: str, seq: int) -> tuple[int, list[Change], int]:
    """Ask what changed since snapshot *name*, page by page from seq *seq*
    on, as a primary does: whether the replica found it, every change,
    and how many pages it took."""
    found: list[Change] = []
    after, started = b"", 0
    for pages in range(1, MAX_PAGES + 1):
        conn.enqueue(tp.SnapshotChanges(seq=seq + pages - 1, name=name, started=started, after=after))
        await conn.flush()
        while not isinstance(reply := await _reply(conn), tp.Changes):
            pass
        assert reply.seq == seq + pages - 1
        if not reply.found:
            assert not reply.more
            assert not reply.entries
            return 0, [], pages
        page = reply.items()
        assert page or not reply.more, "a page that is not the last must hold a path"
        found += page
        if not reply.more:
            return 1, found, pages
        after, started = page[-1][0], 1
    raise AssertionError(f"more than {MAX_PAGES} pages of changes")


async def _close(conn: tp.Connection, last_seq: int) -> None:
    """End the session in order, as a primary does on unmount."""
    await conn.send(tp.Close(last_seq=last_seq))
    while not isinstance(await _reply(conn), tp.Close):
        pass
    await conn.aclose()


def _position_file(cluster: Cluster, group: bytes) -> Path:
    return cluster.secondary.store / ".fsrep" / "replicas" / f"{uuid.UUID(bytes=group)}.json"


def _chain_file(cluster: Cluster, group: bytes) -> Path:
    return _position_file(cluster, group).with_suffix(".snapshots")


def _saved_chain(path: Path) -> tuple[dict, list[dict]]:
    """The chain's base and the records of its journal (read once the
    daemon stopped: a load cuts a torn end off)."""
    return tracking.JournaledState(path, tracking.SNAPSHOTS_KIND).load()


def _records(path: Path) -> int:
    """How many records the journal of chain file *path* holds (read while the daemon runs)."""
    journal = path.with_name(path.name + ".journal")
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


async def _saved(cluster: Cluster, group: bytes, seq: int) -> dict:
    """The replica's position file once it has recorded *seq*."""
    with trio.fail_after(SAVED_WITHIN):
        while True:
            state = tracking.load_state(_position_file(cluster, group), REPLICA_KIND)
            if state["last_seq"] >= seq:
                return state
            await trio.sleep(0.05)


# Frames before the snapshot, the snapshot (seq 5), the changes after it, and what they leave recorded.
BEFORE: list[tp.Operation] = [
    tp.MkDir(seq=1, path=b"d", mode=0o755, uid=0, gid=0),
    tp.Create(seq=2, path=b"d/x", mode=0o644, uid=0, gid=0),
    tp.Write(seq=3, path=b"d/x", offset=0, data=b"hello"),
    tp.Create(seq=4, path=b"a", mode=0o644, uid=0, gid=0),
]
SNAPSHOT = tp.Snapshot(seq=5, name="s1", created=1_700_000_000)
AFTER: list[tp.Operation] = [
    tp.Write(seq=6, path=b"a", offset=8192, data=b"z" * 5000),
    tp.Rename(seq=7, old=b"d/x", new=b"d/y"),
    tp.MkDir(seq=8, path=b"e", mode=0o755, uid=0, gid=0),
    tp.Create(seq=9, path=b"e/f", mode=0o644, uid=0, gid=0),
    tp.SetAttr(seq=10, path=b"a", fields=tp.ATTR_SIZE, size=0),
    tp.Fsync(seq=11, path=b"a"),
    tp.Remove(seq=12, path=b"d/y"),
]
RECORDED: list[Change] = [(b"", DIR, []), (b"a", META, [(0, 4)]), (b"d", DIR, []), (b"d/y", WHOLE, []),
                          (b"e", META | DIR, []), (b"e/f", META, [])]


async def test_a_snapshot_records_exactly_what_changes_after_it(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, welcome = await _connect(cluster, group)
    assert welcome.snapshot_list() == []
    await _send(conn, *BEFORE, SNAPSHOT, *AFTER, tp.Snapshot(seq=13, name="s2"))
    assert await _changes(conn, "s1", 14) == (1, RECORDED, 1)
    assert await _changes(conn, "s2", 15) == (1, [], 1)  # a snapshot starts with nothing changed since
    assert await _changes(conn, "never-taken", 16) == (0, [], 1)
    await _close(conn, 16)


async def test_the_welcome_lists_the_replica_s_snapshots_and_a_retired_one_is_gone(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    await _send(conn, *BEFORE, SNAPSHOT, AFTER[0], tp.Snapshot(seq=7, name="s2", created=2),
                tp.Write(seq=8, path=b"a", offset=0, data=b"y"))
    await _close(conn, 8)
    conn, welcome = await _connect(cluster, group)
    assert welcome.snapshot_list() == [("s1", 5), ("s2", 7)]
    await _send(conn, tp.RetireSnapshot(seq=9, name="s2"))
    assert await _changes(conn, "s2", 10) == (0, [], 1)
    # What changed since s2 stays recorded for s1, the one before it.
    assert await _changes(conn, "s1", 11) == (1, [(b"a", 0, [(0, 1), (2, 2)])], 1)
    await _send(conn, tp.RetireSnapshot(seq=12, name="s1"), tp.RetireSnapshot(seq=13, name="never-taken"))
    await _close(conn, 13)
    conn, welcome = await _connect(cluster, group)
    assert welcome.snapshot_list() == []
    assert welcome.last_seq == 13
    await _close(conn, 13)
    assert _saved_chain(_chain_file(cluster, group)) == ({"snapshots": []}, []), "a retired snapshot's record was kept"


# A file's record of this many scattered regions is 128 KiB in a Changes frame; nine of them pass a page.
RUNS = tracking.MAX_RUNS_PER_CHANGE


def _scattered(seq: int, path: bytes, count: int) -> list[tp.Operation]:
    """Punch frames marking *count* regions of *path*, none next to another."""
    offsets = [2 * i * tracking.REGION_SIZE for i in range(count)]
    return [tp.Punch(seq=seq + n, path=path, runs=tp.pack_runs([(o, 1) for o in offsets[at:at + tp.MAX_RUNS]]))
            for n, at in enumerate(range(0, count, tp.MAX_RUNS))]


async def test_a_long_answer_comes_in_pages_that_list_every_path_once(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    files = [b"file-%d" % i for i in range(9)]
    conn, _ = await _connect(cluster, group)
    await _send(conn, *[tp.Create(seq=i + 1, path=f, mode=0o644, uid=0, gid=0) for i, f in enumerate(files)],
                tp.Create(seq=10, path=b"too-many", mode=0o644, uid=0, gid=0), tp.Snapshot(seq=11, name="big"))
    seq = 12
    for path, count in [*[(f, RUNS) for f in files], (b"too-many", RUNS + 1)]:
        frames = _scattered(seq, path, count)
        await _send(conn, *frames)
        seq += len(frames)
    found, changes, pages = await _changes(conn, "big", seq)
    assert found
    per_page = -(-_replica_snapshots.PAGE_BYTES // (15 + RUNS * 16))  # paths until the page holds PAGE_BYTES
    assert pages == -(-len(files) // per_page) > 1, "pages are as full as allowed"
    assert [path for path, _, _ in changes] == files + [b"too-many"]
    assert all(runs == [(2 * i, 1) for i in range(RUNS)] and flags == 0 for path, flags, runs in changes[:-1])
    assert changes[-1] == (b"too-many", WHOLE, []), "a path with more runs than a change holds is sent whole"
    await _close(conn, seq + pages - 1)


async def _recorded_then_stopped(cluster: Cluster) -> bytes:
    """A new group whose replica recorded RECORDED since s1, with the
    secondary then stopped in order; the group's id."""
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    await _send(conn, *BEFORE, SNAPSHOT, *AFTER)
    await _close(conn, 12)
    cluster.secondary.stop()
    return group


async def test_snapshots_and_their_changes_survive_a_restart(cluster: Cluster) -> None:
    group = await _recorded_then_stopped(cluster)
    cluster.secondary.start()
    conn, welcome = await _connect(cluster, group)
    assert welcome.last_seq == 12
    assert welcome.snapshot_list() == [("s1", 5)]
    assert await _changes(conn, "s1", 13) == (1, RECORDED, 1)
    await _close(conn, 13)


async def test_after_a_kill_the_replica_keeps_the_snapshots_its_saved_position_reached(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    await _send(conn, *BEFORE, SNAPSHOT, *AFTER[:4])
    saved = await _saved(cluster, group, 9)
    assert saved["snapshots"] == [["s1", 5]]
    # Then, before the next checkpoint (2 s on): changes, a second snapshot, and kill -9.
    lost = [*AFTER[4:], tp.Snapshot(seq=13, name="s2", created=2), tp.Write(seq=14, path=b"e/f", offset=0, data=b"!")]
    await _send(conn, *lost)
    cluster.secondary.stop(signal.SIGKILL)
    with pytest.raises(tp.LinkDown):
        await _reply(conn)
    after_kill = tracking.load_state(_position_file(cluster, group), REPLICA_KIND)
    assert after_kill["last_seq"] == 9, "the secondary saved its position again before the kill (a stalled host?)"
    cluster.secondary.start()
    conn, welcome = await _connect(cluster, group)
    assert welcome.last_seq == 9
    assert welcome.snapshot_list() == [("s1", 5)], "a snapshot the saved position never reached was kept"
    recorded_by_9 = [(b"", DIR, []), (b"a", 0, [(2, 2)]), (b"d", DIR, []), (b"d/y", WHOLE, []),
                     (b"e", META | DIR, []), (b"e/f", META, [])]
    assert await _changes(conn, "s1", 10) == (1, recorded_by_9, 1)
    # The primary sends again what the replica lost (here after the question's seq): it is recorded again.
    again = [tp.SetAttr(seq=11, path=b"a", fields=tp.ATTR_SIZE, size=0), tp.Snapshot(seq=12, name="s2", created=2),
             tp.Write(seq=13, path=b"e/f", offset=0, data=b"!")]
    await _send(conn, *again)
    assert await _changes(conn, "s2", 14) == (1, [(b"e/f", 0, [(0, 1)])], 1)
    await _close(conn, 14)


def _scattered_write(seq: int, n: int) -> tp.Write:
    """The *n*-th write after SNAPSHOT: region 2n of file a, next to no other."""
    return tp.Write(seq=seq, path=b"a", offset=2 * n * tracking.REGION_SIZE, data=b"w")


async def _appended(cluster: Cluster, conn: tp.Connection, group: bytes, seq: int, count: int) -> None:
    """Send *count* scattered writes from seq *seq* on, each saved (a record
    appended) before the next is sent."""
    chain_file = _chain_file(cluster, group)
    for n in range(count):
        await _send(conn, _scattered_write(seq + n, n))
        await _saved(cluster, group, seq + n)  # the position is written after the record
        assert _records(chain_file) == n + 1, "not one record appended per checkpoint"


async def test_a_checkpoint_appends_what_changed_and_leaves_the_base_as_it_was(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    await _send(conn, *BEFORE, SNAPSHOT)
    await _saved(cluster, group, SNAPSHOT.seq)
    base = _chain_file(cluster, group)
    before = base.stat()
    await _appended(cluster, conn, group, 6, 3)
    after = base.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "the base was written again"
    assert await _changes(conn, "s1", 9) == (1, [(b"a", 0, [(0, 1), (2, 1), (4, 1)])], 1)
    await _close(conn, 9)
    cluster.secondary.stop()
    chain, records = _saved_chain(base)
    assert chain["snapshots"][0]["delta"] == {"paths": []}, "the base holds the snapshot as it was taken"
    assert [record["snapshot"] for record in records] == ["s1"] * 3


async def test_after_a_kill_the_journal_restores_the_changes_up_to_the_saved_position(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    await _send(conn, *BEFORE, SNAPSHOT)
    await _saved(cluster, group, SNAPSHOT.seq)
    await _appended(cluster, conn, group, 6, 3)
    await _send(conn, *[_scattered_write(9 + n, 3 + n) for n in range(3)])  # and these, most likely not saved
    cluster.secondary.stop(signal.SIGKILL)
    with pytest.raises(tp.LinkDown):
        await _reply(conn)
    saved = tracking.load_state(_position_file(cluster, group), REPLICA_KIND)["last_seq"]
    assert 8 <= saved <= 11
    cluster.secondary.start()
    conn, welcome = await _connect(cluster, group)
    assert (welcome.last_seq, welcome.snapshot_list()) == (saved, [("s1", 5)])
    found, changes, _ = await _changes(conn, "s1", saved + 1)
    assert found
    ((path, flags, runs),) = changes
    assert (path, flags) == (b"a", 0)
    # Every write up to the saved position; one after it only if its record was appended before the kill.
    assert runs == [(2 * n, 1) for n in range(len(runs))]
    assert saved - 5 <= len(runs) <= 6
    await _close(conn, saved + 1)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
@pytest.mark.expect_log(CORRUPT_CHAIN)
async def test_a_damaged_snapshot_file_drops_the_snapshots_with_one_warning(cluster: Cluster, damage: str) -> None:
    group = await _recorded_then_stopped(cluster)
    chain_file = _chain_file(cluster, group)
    if damage == "corrupt":
        chain_file.write_bytes(chain_file.read_bytes()[:-40] + b"garbage")
    else:
        chain_file.unlink()
    cluster.secondary.start()
    conn, welcome = await _connect(cluster, group)
    assert welcome.last_seq == 12, "the replica itself is still good"
    assert welcome.snapshot_list() == []
    assert await _changes(conn, "s1", 13) == (0, [], 1)
    await _send(conn, tp.Snapshot(seq=14, name="s1", created=3), tp.Write(seq=15, path=b"a", offset=0, data=b"x"))
    assert await _changes(conn, "s1", 16) == (1, [(b"a", 0, [(0, 1)])], 1)  # and a new one is taken as ever
    await _close(conn, 16)
    log = (cluster.secondary.store / ".fsrep" / "serve.log").read_text()
    said = [line for line in log.splitlines() if "cannot load the replica's snapshots" in line]
    assert len(said) == 1, said
    assert str(chain_file) in said[0]
    assert "dropping s1" in said[0]
    assert "Traceback" not in log


@pytest.mark.expect_log(REPLICA_REPLACED)
async def test_a_replaced_replica_directory_starts_without_snapshots(cluster: Cluster) -> None:
    group = await _recorded_then_stopped(cluster)
    shutil.rmtree(cluster.secondary.replica_root())
    cluster.secondary.start()
    conn, welcome = await _connect(cluster, group)
    assert (welcome.last_seq, welcome.snapshot_list()) == (0, [])
    await _close(conn, 0)
    cluster.secondary.stop()
    assert _saved_chain(_chain_file(cluster, group)) == ({"snapshots": []}, [])


@pytest.mark.expect_log(DUPLICATE)
async def test_a_name_taken_twice_keeps_the_first_snapshot(cluster: Cluster) -> None:
    group = uuid.uuid4().bytes
    conn, _ = await _connect(cluster, group)
    await _send(conn, tp.Snapshot(seq=1, name="twice"), tp.Create(seq=2, path=b"f", mode=0o644, uid=0, gid=0))
    await _send(conn, tp.Snapshot(seq=3, name="twice"))
    assert await _changes(conn, "twice", 4) == (1, [(b"", DIR, []), (b"f", META, [])], 1)
    await _close(conn, 4)
    conn, welcome = await _connect(cluster, group)
    assert welcome.snapshot_list() == [("twice", 1)]
    await _close(conn, 4)


# --- the bookkeeping, on an in-process replica -------------------------------------------------------------------


@pytest.fixture
def replica(tmp_path: Path):
    secondary = Secondary(tmp_path, b"k" * 32)
    try:
        yield secondary.replica(uuid.UUID(int=5).bytes)
    finally:
        secondary.close()


def _pages(replica: Replica, name: str) -> list[list[Change]]:
    """Every page of the answer, asked for as a primary does."""
    pages: list[list[Change]] = []
    after, started = b"", 0
    for seq in range(1, MAX_PAGES):
        answer = apply(replica, tp.SnapshotChanges(seq=seq, name=name, started=started, after=after))
        assert isinstance(answer, tp.Changes)
        assert answer.found
        pages.append(answer.items())
        if not answer.more:
            return pages
        assert pages[-1], "a page that is not the last must hold a path"
        after, started = pages[-1][-1][0], 1
    raise AssertionError("too many pages")


@pytest.mark.parametrize("page_bytes", [1, 60, 200, tp.MAX_CHANGES])
def test_pages_of_any_size_list_every_changed_path_once_in_order(replica: Replica, monkeypatch: pytest.MonkeyPatch,
                                                                 page_bytes: int) -> None:
    monkeypatch.setattr(_replica_snapshots, "PAGE_BYTES", page_bytes)
    apply(replica, tp.Snapshot(seq=1, name="s"))
    seq = 2
    for d in (b"a", b"b", b"b/c"):
        apply(replica, tp.MkDir(seq=seq, path=d, mode=0o755, uid=0, gid=0))
        for name in (b"x", b"y"):
            apply(replica, tp.Create(seq=seq + 1, path=d + b"/" + name, mode=0o644, uid=0, gid=0))
            apply(replica, tp.Write(seq=seq + 2, path=d + b"/" + name, offset=0, data=b"data"))
            seq += 3
    pages = _pages(replica, "s")
    paths = [path for page in pages for path, _, _ in page]
    assert paths == [b"", b"a", b"a/x", b"a/y", b"b", b"b/c", b"b/c/x", b"b/c/y", b"b/x", b"b/y"]
    if page_bytes == 1:
        assert [len(page) for page in pages] == [1] * len(paths), "a page holds at least one path, and the root alone"
    if page_bytes == tp.MAX_CHANGES:
        assert len(pages) == 1


def test_a_paged_answer_gathers_the_changes_once_and_reads_the_newest_in_place(
        replica: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_replica_snapshots, "PAGE_BYTES", 1)
    apply(replica, tp.Snapshot(seq=1, name="old"))
    apply(replica, tp.Create(seq=2, path=b"a", mode=0o644, uid=0, gid=0))
    apply(replica, tp.Snapshot(seq=3, name="new"))
    for seq, name in enumerate((b"b", b"c", b"d"), 4):
        apply(replica, tp.Create(seq=seq, path=name, mode=0o644, uid=0, gid=0))
    unions = []
    since = replica.snapshots.since
    monkeypatch.setattr(replica.snapshots, "since", lambda name: unions.append(name) or since(name))
    assert [p for page in _pages(replica, "old") for p, _, _ in page] == [b"", b"a", b"b", b"c", b"d"]
    assert unions == ["old"], "the union was gathered again for a later page"
    assert [p for page in _pages(replica, "new") for p, _, _ in page] == [b"", b"b", b"c", b"d"]
    assert unions == ["old"], "the newest snapshot's changes were copied"
    assert replica.answering is None, "the answer's changes are kept after its last page"


def test_a_full_chain_retires_its_oldest_to_take_a_new_one(replica: Replica, caplog: pytest.LogCaptureFixture) -> None:
    for seq in range(1, tracking.MAX_SNAPSHOTS + 1):
        apply(replica, tp.Snapshot(seq=seq, name=f"s{seq}"))
    caplog.set_level(logging.INFO, logger="fsrep._replica_snapshots")
    apply(replica, tp.Snapshot(seq=100, name="newest"))
    names = [sid.name for sid in replica.snapshots]
    assert len(names) == tracking.MAX_SNAPSHOTS
    assert names[0] == "s2"
    assert names[-1] == "newest"
    assert any("retired the oldest, snapshot s1 at seq 1" in r.getMessage() for r in caplog.records)


def test_a_snapshot_records_its_place_in_the_stream(replica: Replica) -> None:
    apply(replica, tp.Snapshot(seq=3, name="before", created=1_700_000_000))
    replica.generations = [uuid.UUID(int=9).bytes]
    apply(replica, tp.Snapshot(seq=4, name="after", created=1_700_000_001))
    before, after = replica.snapshots
    assert (before.generation, before.seq, before.created) == (_replica_snapshots.NO_GENERATION, 3, 1_700_000_000.0)
    assert (after.generation, after.seq) == (uuid.UUID(int=9).hex, 4)


def test_a_checkpoint_saves_a_chain_that_changed_alone(replica: Replica) -> None:
    """Snapshots whose position did not move (a load that dropped some)
    are saved all the same: the position file must list what the chain holds."""
    apply(replica, tp.Snapshot(seq=1, name="s"))
    replica.last_applied = 1
    replica.checkpoint()
    assert json.loads(replica.state_file.read_text())["payload"]["snapshots"] == [["s", 1]]
    replica.snapshots.retire("s")
    replica.checkpoint()
    assert json.loads(replica.state_file.read_text())["payload"]["snapshots"] == []
    assert _saved_chain(replica.saved.path) == ({"snapshots": []}, [])


def test_a_capture_costs_what_changed_since_the_last_not_the_whole_record(replica: Replica) -> None:
    """The checkpoint's part in the event loop: with a snapshot of 200,000
    changed paths saved, a few changes more cost milliseconds to capture."""
    apply(replica, tp.Snapshot(seq=1, name="s"))
    delta = replica.snapshots.current()
    assert delta is not None
    for i in range(200_000):
        delta.mark_regions(b"d%03d/f%06d" % (i // 1000, i), tracking.RegionRange(i % 50, 1))
    replica.last_applied = 1
    replica.checkpoint()  # written whole: it holds a snapshot the file does not
    ops = [tp.Create(seq=2, path=b"new", mode=0o644, uid=0, gid=0),
           *[tp.Write(seq=3 + i, path=b"new", offset=i * 3 * tracking.REGION_SIZE, data=b"x") for i in range(3)]]
    for op in ops:
        apply(replica, op)
    replica.last_applied = ops[-1].seq
    started = time.perf_counter()
    saving = replica.capture()
    took = time.perf_counter() - started
    print(f"capture of a few changes over a 200k-path record: {took * 1000:.2f} ms")
    assert saving is not None
    assert saving.chain is not None
    assert not saving.chain.whole
    assert saving.chain.payload["changes"] == {"paths": [["", DIR, []], [b"new".hex(), META, [[0, 1], [3, 1], [6, 1]]]]}
    assert took < 0.1
    replica.checkpoint(saving)
    assert _saved_chain(replica.saved.path)[1] == [saving.chain.payload]


def _reopened(store: Path, group: bytes) -> Replica:
    """The replica of *group* as a secondary starting on *store* finds it."""
    return Secondary(store, b"k" * 32).replica(group)


def test_a_failed_append_loses_nothing_the_next_save_writes_it_all(tmp_path: Path) -> None:
    group = uuid.UUID(int=6).bytes
    replica = Secondary(tmp_path, b"k" * 32).replica(group)
    for op in (tp.Create(seq=1, path=b"f", mode=0o644, uid=0, gid=0), tp.Snapshot(seq=2, name="s"),
               tp.Write(seq=3, path=b"f", offset=0, data=b"x")):
        apply(replica, op)
        replica.last_applied = op.seq
    replica.checkpoint()
    journal = replica.saved.file.journal
    journal.unlink()
    journal.mkdir()  # the append fails: its path is a directory
    apply(replica, tp.Write(seq=4, path=b"f", offset=4 * tracking.REGION_SIZE, data=b"y"))
    replica.last_applied = 4
    with pytest.raises(IsADirectoryError):
        replica.checkpoint()
    journal.rmdir()
    apply(replica, tp.Write(seq=5, path=b"f", offset=8 * tracking.REGION_SIZE, data=b"z"))
    replica.last_applied = 5
    base = replica.saved.path.stat()
    replica.checkpoint()
    assert replica.saved.path.stat().st_ino != base.st_ino, "not written whole after a failed append"
    replica.tree.close()
    again = _reopened(tmp_path, group)
    assert again.last_applied == 5
    assert _pages(again, "s") == [[(b"f", 0, [(0, 1), (4, 1), (8, 1)])]]
    again.tree.close()


def test_a_capture_made_before_the_one_before_is_written_writes_the_chain_whole(replica: Replica) -> None:
    """Its record would lack what the one before holds; and the older,
    written after it, is not written over it."""
    apply(replica, tp.Snapshot(seq=1, name="s"))
    replica.last_applied = 1
    replica.checkpoint()
    apply(replica, tp.MkDir(seq=2, path=b"a", mode=0o755, uid=0, gid=0))
    replica.last_applied = 2
    first = replica.capture()
    assert first is not None
    assert first.chain is not None
    assert not first.chain.whole
    apply(replica, tp.MkDir(seq=3, path=b"b", mode=0o755, uid=0, gid=0))
    replica.last_applied = 3
    second = replica.capture()
    assert second is not None
    assert second.chain is not None
    assert second.chain.whole
    replica.checkpoint(second)
    replica.checkpoint(first)
    assert replica.last_saved == 3
    base, records = _saved_chain(replica.saved.path)
    assert records == []
    chain = tracking.SnapshotChain.from_payload(base, tracking.PathChanges, tracking.PathChanges.from_payload)
    assert [c.path for c in chain.since("s").walk()] == [b"", b"a", b"b"]
