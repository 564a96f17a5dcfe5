"""The apply table: a row for every operation the transport decodes,
questions that change nothing, and every change past the before-apply seam
first. Runs on a real directory (as root, like test_tree.py)."""

from __future__ import annotations

import errno
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tracking
import transport as tp
from fsrep._apply import TABLE, Kind, Target, apply
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
    seen: list[tuple[tp.Operation, dict[str, tuple]]] = field(default_factory=list)

    def before_apply(self, op: tp.Operation) -> None:
        self.seen.append((op, entry_states(Path(self.tree.root))))


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
    tp.Purge(seq=20),
]

QUESTIONS: list[tuple[tp.Operation, type[tp.Frame]]] = [
    (tp.ListDir(seq=1, path=b""), tp.Listing),
    (tp.ListDir(seq=2, path=b"d", after=b"a"), tp.Listing),
    (tp.Checksum(seq=3, path=b"f", offset=0, count=3), tp.Digests),
    (tp.Checksum(seq=4, path=b"missing", offset=0, count=1), tp.Digests),
    (tp.ListData(seq=5, path=b"f", offset=0, length=10000), tp.DataMap),
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
    assert questions == {tp.ListDir, tp.Checksum, tp.ListData}
    assert {type(op) for op, _ in QUESTIONS} == questions
    assert not any(cls.BARRIER for cls in questions)


def test_the_samples_here_cover_every_row_that_changes_a_replica() -> None:
    changing = {cls for cls, row in TABLE.items() if row.kind is not Kind.QUESTION}
    assert {type(op) for op in CHANGES} == changing
    assert {cls for cls, row in TABLE.items() if row.kind is Kind.HISTORY} == {tp.Generation}


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
