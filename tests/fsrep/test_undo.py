"""A replica's undo log (fsrep/_undo.py) on a real tree: every kind of
change a resync may send, applied through the secondary's one way in, is
undone by a rollback to exactly the tree the resync began with (inodes,
modes, owners, sizes, mtimes, contents, extended attributes); a rollback
run twice reaches the same; the bound refuses a change and keeps the log;
the log goes once the resync's end is durable."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import tracking
import transport as tp
from fsrep._apply import apply
from fsrep._replica_snapshots import Chain, new_chain
from fsrep._tree import Tree
from fsrep._undo import UndoFull, UndoLog
from tests.conftest import entry_states
from tests.fsrep.test_apply import CHANGES, XATTR

GENERATION = bytes(range(16))
# Every change of test_apply's list but the Generation (it ends a resync) and the ResyncBegin (it opens one).
RESYNC = [op for op in CHANGES if not isinstance(op, tp.Generation | tp.ResyncBegin)]


@dataclass
class UndoReplica:
    """What ``apply`` needs of a replica, with the daemon's seam: the undo log."""

    tree: Tree
    undo: UndoLog
    id: str = "test-group"
    generations: list[bytes] = field(default_factory=list)
    snapshots: Chain = field(default_factory=new_chain)
    answering: tuple[str, tracking.PathChanges] | None = None

    def divergent_dir(self) -> Path:
        return Path(self.tree.root).parent / "divergent"

    def before_apply(self, op: tp.Operation) -> None:
        if isinstance(op, tp.ResyncBegin):
            if not self.undo.open:
                self.undo.begin({"last_seq": op.seq - 1, "generations": [], "snapshots": []})
        elif isinstance(op, tp.Generation):
            self.undo.end(op.seq)
        else:
            self.undo.before(op)


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[UndoReplica]:
    root = tmp_path / "replica"
    root.mkdir()
    (root / "f").write_bytes(os.urandom(10_000))
    os.setxattr(root / "f", XATTR, b"old value")
    (root / "d").mkdir()
    (root / "d" / "g").write_bytes(b"g's data")
    os.link(root / "d" / "g", root / "g-too")
    (root / "e").mkdir()  # in the way of the MkDir: the rename of the directory moves it aside
    os.rmdir(root / "e")
    os.utime(root / "d", ns=(1, 2_000_000_000))
    tree = Tree(root)
    try:
        yield UndoReplica(tree, UndoLog(tmp_path / "undo", tree))
    finally:
        tree.close()


def states(root: Path) -> dict[str, tuple]:
    """Each entry's state without its ctime (a rollback makes a new one)."""
    return {path: state[:5] + state[6:] for path, state in entry_states(root).items()}


@pytest.mark.parametrize("count", range(1, len(RESYNC) + 1))
def test_a_rollback_undoes_every_change_made_since_the_resync_began(replica: UndoReplica, count: int) -> None:
    root = Path(replica.tree.root)
    before = states(root)
    apply(replica, tp.ResyncBegin(seq=100))
    for op in RESYNC[:count]:
        apply(replica, op)
    assert states(root) != before  # the changes did change the tree
    base = replica.undo.rollback()
    assert base["last_seq"] == 99
    assert states(root) == before, f"not undone after {type(RESYNC[count - 1]).__name__}"
    assert replica.undo.rollback() == base  # run again (as after a crash during the first): the same tree
    assert states(root) == before


def test_a_change_the_bound_cannot_hold_is_refused_and_the_log_kept(tmp_path: Path, replica: UndoReplica) -> None:
    root = Path(replica.tree.root)
    before = states(root)
    replica.undo.limit = 8192
    apply(replica, tp.ResyncBegin(seq=1))
    apply(replica, tp.Write(seq=2, path=b"f", offset=0, data=b"x" * 4096))  # one region: 4 KiB kept
    with pytest.raises(UndoFull) as refused:
        apply(replica, tp.Write(seq=3, path=b"f", offset=4096, data=b"y" * 8192))
    assert refused.value.errno == errno.EDQUOT
    assert "undo-limit" in str(refused.value)
    assert (root / "f").read_bytes()[4096:4100] != b"yyyy"  # refused before it was applied
    apply(replica, tp.Write(seq=3, path=b"f", offset=0, data=b"z" * 4096))  # a region kept already costs nothing
    replica.undo.rollback()
    assert states(root) == before


def test_the_log_goes_once_the_end_of_the_resync_is_durable(replica: UndoReplica) -> None:
    apply(replica, tp.ResyncBegin(seq=1))
    apply(replica, tp.Write(seq=2, path=b"f", offset=0, data=b"new"))
    apply(replica, tp.Generation(seq=3, generation=GENERATION))
    apply(replica, tp.Write(seq=4, path=b"f", offset=8192, data=b"in sync again"))  # not kept: nothing to undo
    assert replica.undo.records == 2  # the write, and the end
    replica.undo.release_upto(2)
    assert replica.undo.open  # the end is not durable yet
    replica.undo.release_upto(4)
    assert not replica.undo.open
    assert not replica.undo.dir.exists()


def test_a_log_left_by_a_stopped_daemon_is_taken_up(tmp_path: Path, replica: UndoReplica) -> None:
    root = Path(replica.tree.root)
    before = states(root)
    apply(replica, tp.ResyncBegin(seq=1))
    apply(replica, tp.Write(seq=2, path=b"f", offset=0, data=b"new"))
    apply(replica, tp.Unlink(seq=3, path=b"g-too"))
    again = UndoLog(replica.undo.dir, replica.tree)
    assert again.load()
    assert again.open
    assert again.ended is None
    replica.undo = again
    apply(replica, tp.ResyncBegin(seq=4))  # the resync starts over: the log still rolls back to its first start
    apply(replica, tp.Write(seq=5, path=b"f", offset=0, data=b"newer"))
    assert again.rollback()["last_seq"] == 0
    assert states(root) == before


def test_holes_cost_nothing_to_keep_and_come_back_as_holes(replica: UndoReplica) -> None:
    """A punch or truncate across terabytes of holes keeps only the data it
    finds, and a rollback leaves the holes holes (ext4 takes 16 TiB files)."""
    root = Path(replica.tree.root)
    tib = 1 << 40
    with open(root / "sparse", "wb") as f:
        f.truncate(8 * tib)
        f.seek(4 * tib)
        f.write(b"data among the holes")
    before = (root / "sparse").stat()
    apply(replica, tp.ResyncBegin(seq=1))
    apply(replica, tp.Punch(seq=2, path=b"sparse", runs=tp.pack_runs([(0, 8 * tib)])))
    apply(replica, tp.SetAttr(seq=3, path=b"sparse", fields=tp.ATTR_SIZE, size=4096))
    assert replica.undo.data_bytes == 4096  # the one region of data, nothing of the holes
    replica.undo.rollback()
    after = (root / "sparse").stat()
    assert (after.st_size, after.st_blocks, after.st_mtime_ns) == (before.st_size, before.st_blocks,
                                                                    before.st_mtime_ns)
    with open(root / "sparse", "rb") as f:
        f.seek(4 * tib)
        assert f.read(20) == b"data among the holes"


def test_a_file_linked_or_made_in_a_new_directory_is_still_undone(replica: UndoReplica) -> None:
    root = Path(replica.tree.root)
    before = states(root)
    apply(replica, tp.ResyncBegin(seq=1))
    apply(replica, tp.MkDir(seq=2, path=b"new", mode=0o755, uid=0, gid=0))
    apply(replica, tp.Link(seq=3, target=b"f", new=b"new/f-too"))  # an old file's new name
    apply(replica, tp.Write(seq=4, path=b"new/f-too", offset=0, data=b"through the new name"))
    apply(replica, tp.MkDir(seq=5, path=b"new/sub", mode=0o755, uid=0, gid=0))
    apply(replica, tp.Create(seq=6, path=b"new/sub/x", mode=0o644, uid=0, gid=0))
    apply(replica, tp.Write(seq=7, path=b"new/sub/x", offset=0, data=b"new data"))
    assert replica.undo.data_bytes == 4096  # the old file's region, nothing of what is new
    replica.undo.rollback()
    assert states(root) == before
