"""The apply table: a row for every operation the transport decodes,
questions that change nothing, every change past the before-apply seam
first, and what each mutation marks since a snapshot. Runs on a real
directory (as root, like test_tree.py)."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tracking
import transport as tp
from fsrep._apply import TABLE, Kind, Target, apply
from fsrep._replica_snapshots import Chain, new_chain
from fsrep._reserved import staged
from fsrep._secondary import Secondary
from fsrep._tree import Tree
from tests.conftest import entry_states
from transport._frames import FRAME_TYPES, OPERATION_TYPES

XATTR = b"user.fsrep-test"
GENERATION = uuid.UUID(int=7).bytes


@dataclass
class RecordingReplica:
    """A replica whose seam keeps what an undo log would need: the frame,
    and what the tree held when the frame reached the seam."""

    tree: Tree
    id: str = "test-group"
    generations: list[bytes] = field(default_factory=list)
    snapshots: Chain = field(default_factory=new_chain)
    answering: tuple[str, tracking.PathChanges] | None = None
    seen: list[tuple[tp.Operation, dict[str, tuple]]] = field(default_factory=list)

    def before_apply(self, op: tp.Operation) -> None:
        self.seen.append((op, entry_states(Path(self.tree.root))))

    def divergent_dir(self) -> Path:
        return Path(self.tree.root).parent / "divergent"


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[RecordingReplica]:
    root = tmp_path / "replica"
    root.mkdir()
    (root / "f").write_bytes(b"0123456789" * 1000)
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"")
    tree = Tree(root)
    try:
        yield RecordingReplica(tree)
    finally:
        tree.close()


# One frame of every type that changes a replica, in an order that applies cleanly to the fixture's tree.
CHANGES: list[tp.Operation] = [
    tp.MkDir(seq=1, path=b"e", mode=0o755, uid=0, gid=0),
    tp.Create(seq=2, path=b"e/f", mode=0o644, uid=0, gid=0),
    tp.Clone(seq=2, src=b"f", path=b"copy", mode=0o100600, uid=0, gid=0),
    tp.Write(seq=3, path=b"f", offset=5, data=b"new"),
    tp.WriteRuns.of(4, b"f", [(0, b"a"), (9000, b"b")]),
    tp.Punch(seq=5, path=b"f", runs=tp.pack_runs([(4096, 4096)])),
    tp.SetAttr(seq=6, path=b"f", fields=tp.ATTR_SIZE | tp.ATTR_MODE, size=9500, mode=0o600),
    tp.SetXattr(seq=7, path=b"f", name=XATTR, value=b"v"),
    tp.RemoveXattr(seq=8, path=b"f", name=XATTR),
    tp.KeepXattrs(seq=9, path=b"f", names=b""),
    tp.MkNod(seq=10, path=b"fifo", mode=stat.S_IFIFO | 0o600, rdev=0, uid=0, gid=0),
    tp.Symlink(seq=11, path=b"s", target=b"f", uid=0, gid=0),
    tp.Link(seq=12, target=b"f", new=b"d/f2"),
    tp.Rename(seq=13, old=b"d/f2", new=b"d/f3"),
    tp.Unlink(seq=14, path=b"d/f3"),
    tp.Fsync(seq=15, path=b"f"),
    tp.Generation(seq=16, generation=GENERATION),
    tp.Remove(seq=17, path=b"d"),
    tp.Unlink(seq=18, path=b"e/f"),
    tp.RmDir(seq=19, path=b"e"),
    tp.Snapshot(seq=20, name="before-purge", created=1),
    tp.RetireSnapshot(seq=21, name="before-purge"),
    tp.Purge(seq=22),
    tp.ResyncBegin(seq=23),
]

QUESTIONS: list[tuple[tp.Operation, type[tp.Frame]]] = [
    (tp.ListDir(seq=1, path=b""), tp.Listing),
    (tp.ListDir(seq=2, path=b"d", after=b"a"), tp.Listing),
    (tp.Checksum(seq=3, path=b"f", offset=0, count=3), tp.Digests),
    (tp.Checksum(seq=4, path=b"missing", offset=0, count=1), tp.Digests),
    (tp.ListData(seq=5, path=b"f", offset=0, length=10000), tp.DataMap),
    (tp.SnapshotChanges(seq=6, name="none-taken"), tp.Changes),
    (tp.KeepDivergent(seq=7, name="none-taken"), tp.Kept),
    (tp.Fetch(seq=8, path=b"f", offset=9000, length=4096), tp.Fetched),
    (tp.Fetch(seq=9, path=b"missing"), tp.Fetched),
    (tp.Adopt(seq=10, take=tp.ADOPT_ASK, state=b"{}"), tp.Adopted),  # a plain secondary: it takes no group
]


def test_the_table_has_a_row_for_every_operation_the_transport_decodes() -> None:
    """A new Operation type fails here until it has a row."""
    assert set(OPERATION_TYPES) == {cls for cls in FRAME_TYPES.values() if issubclass(cls, tp.Operation)}
    missing = set(OPERATION_TYPES) - set(TABLE)
    assert not missing, f"no row in fsrep._apply.TABLE for {sorted(cls.__name__ for cls in missing)}"
    assert set(TABLE) == set(OPERATION_TYPES)
    assert all(isinstance(row.kind, Kind) and callable(row.handler) for row in TABLE.values())


def test_the_questions_are_the_frames_the_secondary_answers() -> None:
    questions = {cls for cls, row in TABLE.items() if row.kind is Kind.QUESTION}
    assert questions == {tp.ListDir, tp.Checksum, tp.ListData, tp.SnapshotChanges, tp.KeepDivergent, tp.Fetch,
                         tp.Adopt}
    assert {type(op) for op, _ in QUESTIONS} == questions
    assert not any(cls.BARRIER for cls in questions)


def test_the_samples_here_cover_every_row_that_changes_a_replica() -> None:
    changing = {cls for cls, row in TABLE.items() if row.kind is not Kind.QUESTION}
    assert {type(op) for op in CHANGES} == changing
    assert {cls for cls, row in TABLE.items() if row.kind is Kind.HISTORY} == {tp.Generation}
    assert {cls for cls, row in TABLE.items() if row.kind is Kind.SNAPSHOT} == {tp.Snapshot, tp.RetireSnapshot}


@pytest.mark.parametrize(("op", "answer_type"), QUESTIONS, ids=[f"{type(op).__name__}-{op.seq}" for op, _ in QUESTIONS])
def test_a_question_answers_at_its_seq_and_changes_nothing(replica: RecordingReplica, op: tp.Operation,
                                                           answer_type: type[tp.Frame]) -> None:
    before = entry_states(Path(replica.tree.root))
    answer = apply(replica, op)
    assert isinstance(answer, answer_type)
    assert answer.seq == op.seq  # type: ignore[attr-defined]
    assert entry_states(Path(replica.tree.root)) == before
    assert replica.seen == []  # a question never reaches the seam
    assert replica.generations == []


def test_the_answers_say_what_the_tree_holds(replica: RecordingReplica) -> None:
    listing = apply(replica, tp.ListDir(seq=1, path=b""))
    assert isinstance(listing, tp.Listing)
    assert sorted(e.name for e in listing.items()) == [b"d", b"f"]
    digests = apply(replica, tp.Checksum(seq=2, path=b"f", offset=0, count=3))
    assert isinstance(digests, tp.Digests)
    assert digests.digests == tracking.region_digests(b"0123456789" * 1000, 3)
    data_map = apply(replica, tp.ListData(seq=3, path=b"f", offset=0, length=20000))
    assert isinstance(data_map, tp.DataMap)
    assert data_map.run_list() == [(0, 10000)]
    assert data_map.end == 20000


def test_a_fetch_gives_the_entry_as_the_replica_holds_it_and_never_what_lies_outside(
        replica: RecordingReplica, tmp_path: Path) -> None:
    root = Path(replica.tree.root)
    os.setxattr(root / "f", "user.k", b"v")
    os.symlink("d/g", root / "link")
    os.symlink(str(tmp_path), root / "out")  # a symlink out of the replica
    got = apply(replica, tp.Fetch(seq=1, path=b"f", offset=9995, length=100))
    assert isinstance(got, tp.Fetched)
    st = os.lstat(root / "f")
    assert (got.found, got.mode, got.size, got.mtime_ns) == (1, st.st_mode, 10000, st.st_mtime_ns)
    assert got.data == b"56789"  # fewer at the end of the file
    assert got.xattr_list() == [(b"user.k", b"v")]
    link = apply(replica, tp.Fetch(seq=2, path=b"link", length=100))
    assert isinstance(link, tp.Fetched)
    assert (link.target, link.data) == (b"d/g", b"")
    assert stat.S_ISLNK(link.mode)
    (tmp_path / "secret").write_bytes(b"outside")
    outside = apply(replica, tp.Fetch(seq=3, path=b"out/secret", length=100))  # through the symlink: not followed
    assert isinstance(outside, tp.Fetched)
    assert (outside.found, outside.data) == (0, b"")


def test_every_change_passes_the_seam_before_it_is_applied(replica: RecordingReplica) -> None:
    root = Path(replica.tree.root)
    for op in CHANGES:
        before = entry_states(root)
        assert apply(replica, op) is None
        seen, at_seam = replica.seen[-1]
        assert seen is op
        assert at_seam == before, f"{type(op).__name__} changed the tree before the seam saw it"
    assert [op for op, _ in replica.seen] == CHANGES
    assert entry_states(root).keys() == {"."}  # the last one, Purge, emptied it: each did its work


def test_the_seam_sees_what_a_write_is_about_to_overwrite(replica: RecordingReplica) -> None:
    apply(replica, tp.Write(seq=1, path=b"f", offset=0, data=b"XYZ"))
    _, at_seam = replica.seen[0]
    assert at_seam["f"][8][:3] == b"012"  # the old bytes: what an undo log keeps
    assert (Path(replica.tree.root) / "f").read_bytes()[:3] == b"XYZ"


def test_a_generation_extends_the_history_and_leaves_the_tree(replica: RecordingReplica) -> None:
    before = entry_states(Path(replica.tree.root))
    replica.generations = [uuid.UUID(int=1).bytes]
    apply(replica, tp.Generation(seq=1, generation=GENERATION))
    assert replica.generations == [uuid.UUID(int=1).bytes, GENERATION]
    assert entry_states(Path(replica.tree.root)) == before
    assert [op for op, _ in replica.seen] == [tp.Generation(seq=1, generation=GENERATION)]


def test_a_failed_change_is_an_oserror_after_the_seam(replica: RecordingReplica) -> None:
    with pytest.raises(FileNotFoundError):
        apply(replica, tp.Write(seq=1, path=b"missing", offset=0, data=b"x"))
    assert len(replica.seen) == 1


@pytest.mark.parametrize("op", [tp.ListDir(seq=1, path=b""), tp.Generation(seq=1, generation=GENERATION)],
                         ids=lambda op: type(op).__name__)
def test_the_primary_s_tree_applies_mutations_only(replica: RecordingReplica, op: tp.Operation) -> None:
    before = entry_states(Path(replica.tree.root))
    with pytest.raises(OSError) as caught:
        replica.tree.apply(op)
    assert caught.value.errno == errno.ENOSYS
    assert entry_states(Path(replica.tree.root)) == before


def test_the_secondary_s_replica_is_what_the_table_applies_to(tmp_path: Path) -> None:
    secondary = Secondary(tmp_path, b"k" * 32)
    try:
        replica = secondary.replica(uuid.UUID(int=3).bytes)
        assert isinstance(replica, Target)
        apply(replica, tp.Create(seq=1, path=b"f", mode=0o644, uid=0, gid=0))
        apply(replica, tp.Generation(seq=2, generation=GENERATION))
        assert (Path(replica.tree.root) / "f").is_file()
        assert replica.generations == [GENERATION]
    finally:
        secondary.close()


# --- what each change marks since a snapshot ------------------------------------------

META, DIR, WHOLE = tracking.META, tracking.DIR, tracking.WHOLE
Marked = list[tuple[bytes, int, list[tuple[int, int]]]]


def _marked(replica: RecordingReplica, *ops: tp.Operation, before: tuple[tp.Operation, ...] = ()) -> Marked:
    """What a snapshot taken after *before* records once *ops* are applied:
    (path, flags, [(first region, count)]) of each changed path, in order."""
    for op in before:
        apply(replica, op)
    apply(replica, tp.Snapshot(seq=1, name="s", created=1))
    for op in ops:
        apply(replica, op)
    return [(c.path, c.flags, [(r.first, r.count) for r in c.runs]) for c in replica.snapshots.since("s").walk()]


MADE = [tp.Create(seq=2, path=b"d/new", mode=0o644, uid=0, gid=0),
        tp.MkNod(seq=2, path=b"d/new", mode=stat.S_IFIFO | 0o600, rdev=0, uid=0, gid=0),
        tp.MkDir(seq=2, path=b"d/new", mode=0o755, uid=0, gid=0),
        tp.Symlink(seq=2, path=b"d/new", target=b"../f", uid=0, gid=0)]
META_ONLY = [tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_MODE | tp.ATTR_UID, mode=0o600, uid=1),
             tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_TIMES, atime_ns=1, mtime_ns=2),
             tp.SetXattr(seq=2, path=b"f", name=XATTR, value=b"v"),
             tp.KeepXattrs(seq=2, path=b"f", names=b"")]


def test_a_write_marks_the_regions_it_touches(replica: RecordingReplica) -> None:
    assert _marked(replica, tp.Write(seq=2, path=b"f", offset=4090, data=b"x" * 10)) == [(b"f", 0, [(0, 2)])]


def test_write_runs_mark_each_run(replica: RecordingReplica) -> None:
    op = tp.WriteRuns.of(2, b"f", [(0, b"a"), (9000, b"b"), (3 * 4096, b"c" * 4097)])
    assert _marked(replica, op) == [(b"f", 0, [(0, 1), (2, 3)])]


def test_a_punch_marks_each_run(replica: RecordingReplica) -> None:
    op = tp.Punch(seq=2, path=b"f", runs=tp.pack_runs([(4096, 4096), (20 * 4096, 1)]))
    assert _marked(replica, op) == [(b"f", 0, [(1, 1), (20, 1)])]


@pytest.mark.parametrize(("size", "regions"), [(20000, [(2, 3)]), (0, [(0, 3)]), (10000, [])],
                         ids=["grown", "shrunk", "same"])
def test_a_truncate_marks_the_metadata_and_the_regions_between_the_two_sizes(
        replica: RecordingReplica, size: int, regions: list[tuple[int, int]]) -> None:
    op = tp.SetAttr(seq=2, path=b"f", fields=tp.ATTR_SIZE | tp.ATTR_MTIME, size=size, mtime_ns=5)
    assert _marked(replica, op) == [(b"f", META, regions)]


def test_a_truncate_that_fails_still_counts_as_a_change_of_all_of_the_file(replica: RecordingReplica) -> None:
    with pytest.raises(FileNotFoundError):
        _marked(replica, tp.SetAttr(seq=2, path=b"gone", fields=tp.ATTR_SIZE, size=1))
    assert [(c.path, c.flags) for c in replica.snapshots.since("s").walk()] == [(b"gone", META | WHOLE)]


@pytest.mark.parametrize("op", META_ONLY, ids=lambda op: f"{type(op).__name__}-{getattr(op, 'fields', '')}")
def test_a_change_of_metadata_marks_the_path_s_metadata(replica: RecordingReplica, op: tp.Operation) -> None:
    assert _marked(replica, op) == [(b"f", META, [])]


def test_removing_an_xattr_marks_the_metadata(replica: RecordingReplica) -> None:
    op = tp.RemoveXattr(seq=3, path=b"f", name=XATTR)
    assert _marked(replica, op, before=(tp.SetXattr(seq=2, path=b"f", name=XATTR, value=b"v"),)) == [
        (b"f", META, [])]


@pytest.mark.parametrize("op", MADE, ids=lambda op: type(op).__name__)
def test_a_new_entry_marks_its_directory_and_its_metadata(replica: RecordingReplica, op: tp.Operation) -> None:
    assert _marked(replica, op) == [(b"d", DIR, []), (b"d/new", META, [])]


def test_a_clone_marks_its_directory_and_all_of_the_copy(replica: RecordingReplica) -> None:
    op = tp.Clone(seq=2, src=b"f", path=b"d/new", mode=0o100644, uid=0, gid=0)
    assert _marked(replica, op) == [(b"d", DIR, []), (b"d/new", WHOLE, [])]
    assert (Path(replica.tree.root) / "d" / "new").read_bytes() == b"0123456789" * 1000


@pytest.mark.parametrize("src", [b"missing", b"d"], ids=["missing", "a directory"])
def test_a_replayed_clone_of_a_source_the_replica_lacks_makes_an_empty_file(replica: RecordingReplica,
                                                                            src: bytes) -> None:
    with pytest.raises(OSError):
        apply(replica, tp.Clone(seq=2, src=src, path=b"d/plain", mode=0o100644, uid=0, gid=0))
    assert not (Path(replica.tree.root) / "d" / "plain").exists()
    apply(replica, tp.Clone(seq=3, src=src, path=b"d/new", mode=0o100640, uid=0, gid=0, flags=tp.CLONE_REPLAY))
    made = Path(replica.tree.root) / "d" / "new"
    assert made.read_bytes() == b""
    assert stat.S_IMODE(made.stat().st_mode) == 0o640


def test_a_hard_link_marks_its_directory_the_new_name_and_the_target_s_metadata(replica: RecordingReplica) -> None:
    assert _marked(replica, tp.Link(seq=2, target=b"f", new=b"d/f2")) == [
        (b"d", DIR, []), (b"d/f2", META, []), (b"f", META, [])]


@pytest.mark.parametrize("op", [tp.Unlink(seq=2, path=b"d/g"), tp.Remove(seq=2, path=b"d/g")],
                         ids=lambda op: type(op).__name__)
def test_a_removed_entry_marks_its_directory(replica: RecordingReplica, op: tp.Operation) -> None:
    assert _marked(replica, op) == [(b"d", DIR, [])]


def test_a_removed_directory_marks_its_parent(replica: RecordingReplica) -> None:
    made = tp.MkDir(seq=2, path=b"d/empty", mode=0o755, uid=0, gid=0)
    assert _marked(replica, tp.RmDir(seq=3, path=b"d/empty"), before=(made,)) == [(b"d", DIR, [])]


def test_a_removed_subtree_marks_its_parent_and_keeps_what_was_recorded_below(replica: RecordingReplica) -> None:
    marked = _marked(replica, tp.Write(seq=2, path=b"d/g", offset=0, data=b"x"), tp.Remove(seq=3, path=b"d"))
    assert marked == [(b"", DIR, []), (b"d/g", 0, [(0, 1)])]


def test_a_rename_moves_the_record_and_marks_the_entry_whole_at_its_new_name(replica: RecordingReplica) -> None:
    marked = _marked(replica, tp.Write(seq=2, path=b"f", offset=0, data=b"x"), tp.Rename(seq=3, old=b"f", new=b"d/h"))
    assert marked == [(b"", DIR, []), (b"d", DIR, []), (b"d/h", WHOLE, [(0, 1)])]


def test_a_renamed_directory_takes_the_records_below_it_along(replica: RecordingReplica) -> None:
    marked = _marked(replica, tp.Write(seq=2, path=b"d/g", offset=8192, data=b"x"),
                     tp.Rename(seq=3, old=b"d", new=b"moved"))
    assert marked == [(b"", DIR, []), (b"moved", WHOLE, []), (b"moved/g", 0, [(2, 1)])]


def test_an_exchange_swaps_the_two_records_and_marks_both_whole(replica: RecordingReplica) -> None:
    marked = _marked(replica, tp.Write(seq=2, path=b"f", offset=0, data=b"x"),
                     tp.SetXattr(seq=3, path=b"d/g", name=XATTR, value=b"v"),
                     tp.Rename(seq=4, old=b"f", new=b"d/g", flags=tp.RENAME_EXCHANGE))
    assert marked == [(b"", DIR, []), (b"d", DIR, []), (b"d/g", WHOLE, [(0, 1)]), (b"f", META | WHOLE, [])]
    assert (Path(replica.tree.root) / "f").stat().st_size == 0  # and the two did swap


def test_a_purge_marks_the_root_s_entries(replica: RecordingReplica) -> None:
    assert _marked(replica, tp.Purge(seq=2)) == [(b"", DIR, [])]


@pytest.mark.parametrize("op", [tp.Fsync(seq=2, path=b"f"), tp.Fsync(seq=2, path=b"", whole=1),
                                tp.Generation(seq=2, generation=GENERATION),
                                tp.Snapshot(seq=2, name="another"), tp.RetireSnapshot(seq=2, name="another")],
                         ids=lambda op: type(op).__name__)
def test_durability_history_and_snapshots_mark_nothing(replica: RecordingReplica, op: tp.Operation) -> None:
    assert _marked(replica, op) == []


def test_every_mutation_row_says_what_it_marks() -> None:
    """A new mutation fails here until its row says what it changes since a snapshot."""
    unmarked = {cls for cls, row in TABLE.items() if row.kind is Kind.MUTATION and row.marks is None}
    assert unmarked == {tp.Fsync, tp.ResyncBegin}
    assert all(row.marks is None for row in TABLE.values() if row.kind is not Kind.MUTATION)


def test_a_replica_without_snapshots_records_nothing(replica: RecordingReplica) -> None:
    for op in CHANGES[:5]:
        apply(replica, op)
    assert not replica.snapshots.changed
    assert len(replica.snapshots) == 0


def test_a_staged_clone_backup_lives_outside_the_tree_past_the_seam(replica: RecordingReplica,
                                                                     tmp_path: Path) -> None:
    """A resync stages a clone backup as STAGING/<name>, in a directory
    outside the replica's tree, with no undo (the seam) and no snapshot
    record; a clone into the tree from it is a change like any."""
    staging = tmp_path / "staging"
    staging.mkdir()
    replica.tree.stage_in(staging)
    root = Path(replica.tree.root)
    before = entry_states(root)
    backup = staged("7.1")
    apply(replica, tp.Clone(seq=1, src=b"f", path=backup, mode=0o600, uid=0, gid=0, flags=tp.CLONE_REPLAY))
    apply(replica, tp.WriteRuns.of(2, backup, [(0, b"STAGED")], tp.NO_TIME))
    assert (staging / "7.1").read_bytes()[:8] == b"STAGED67"
    assert entry_states(root) == before, "staging a backup changed the replica's tree"
    assert replica.seen == [], "a staged backup's changes went past the seam (into an undo log)"
    apply(replica, tp.Clone(seq=3, src=backup, path=b"d/vm", mode=0o100644, uid=0, gid=0, flags=tp.CLONE_REPLAY))
    assert [type(op) for op, _ in replica.seen] == [tp.Clone]
    assert (root / "d" / "vm").read_bytes()[:6] == b"STAGED"
    apply(replica, tp.Remove(seq=4, path=backup))
    assert not (staging / "7.1").exists()


@pytest.mark.parametrize("op", [
    tp.Rename(seq=1, old=b"f", new=staged("x")),
    tp.Rename(seq=1, old=staged("x"), new=b"g"),
    tp.Link(seq=1, target=staged("x"), new=b"g"),
    tp.MkDir(seq=1, path=staged("x"), mode=0o755, uid=0, gid=0),
    tp.Remove(seq=1, path=b".fsrep/clones"),
    tp.Write(seq=1, path=b".fsrep/state", offset=0, data=b"x"),
], ids=["rename in", "rename out", "link out", "mkdir", "the staging directory", "beside it"])
def test_nothing_moves_between_the_staging_directory_and_the_tree(replica: RecordingReplica, tmp_path: Path,
                                                                 op: tp.Operation) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "x").write_bytes(b"staged")
    replica.tree.stage_in(staging)
    before = entry_states(Path(replica.tree.root))
    with pytest.raises(OSError) as raised:
        apply(replica, op)
    assert raised.value.errno == errno.EPERM
    assert entry_states(Path(replica.tree.root)) == before
    assert (staging / "x").read_bytes() == b"staged"
