"""The primary's snapshots file: a save is a job made in one step, written
anywhere, finished after; one at a time; a failed one gives its changes
back; what a journal record holds loads back with its base."""

from __future__ import annotations

from pathlib import Path

import tracking
from fsrep._config import GroupStore
from fsrep._snapshot_file import SnapshotFile

REGION = 4096


def _file(tmp_path: Path) -> tuple[SnapshotFile, tracking.SnapshotChain[tracking.DirtySet]]:
    groups = GroupStore(str(tmp_path))
    groups.dir.mkdir(parents=True)
    saved = SnapshotFile(groups.dir / "g.snapshots", groups)
    chain = saved.load("g")
    chain.add(tracking.SnapshotId("s1", "ab" * 16, 3, 1.0))
    return saved, chain


def _write(saved: SnapshotFile, chain: tracking.SnapshotChain[tracking.DirtySet], region: int) -> None:
    marks = tracking.Marks(regions=((7, b"f", region * REGION, REGION),))
    chain.current().apply(marks)
    saved.unsaved.apply(marks)


def _save(saved: SnapshotFile, chain: tracking.SnapshotChain[tracking.DirtySet], seq: int) -> bool:
    job = saved.start(chain, seq)
    assert job is not None
    return saved.finish(chain, job, saved.write(job))


def test_the_chain_is_written_whole_once_then_what_changed_is_appended(tmp_path: Path) -> None:
    saved, chain = _file(tmp_path)
    assert _save(saved, chain, 3)
    base = saved.path.stat()
    _write(saved, chain, 5)
    assert _save(saved, chain, 4)
    _write(saved, chain, 9)
    assert _save(saved, chain, 5)
    assert saved.path.stat().st_mtime_ns == base.st_mtime_ns, "the base was written again"
    assert saved.saved_seq == 5
    again = SnapshotFile(saved.path, GroupStore(str(tmp_path))).load("g")
    assert {r for run in again.since("s1").ranges(7) for r in range(run.first, run.stop)} == {5, 9}


def test_one_save_at_a_time_and_a_failed_one_gives_its_changes_back(tmp_path: Path) -> None:
    saved, chain = _file(tmp_path)
    assert _save(saved, chain, 3)
    _write(saved, chain, 5)
    job = saved.start(chain, 4)
    assert job is not None
    _write(saved, chain, 6)  # recorded while the job is written
    assert saved.start(chain, 4) is None, "a second save while the first is written"
    assert not saved.finish(chain, job, OSError(28, "No space left on device"))
    assert chain.changed
    assert saved.saved_seq == 3
    assert _save(saved, chain, 5)
    again = SnapshotFile(saved.path, GroupStore(str(tmp_path))).load("g")
    assert {r for run in again.since("s1").ranges(7) for r in range(run.first, run.stop)} == {5, 6}
