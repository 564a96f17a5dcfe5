"""Pseudo snapshots: the chain of deltas, changes by path, and the property
that makes them worth having — whatever interleaving of client writes,
acks, snapshot steps and a cut link, what differs between the two sides is
within what changed on either side since a common snapshot, plus its
intercept log."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tracking
from tracking import (
    DIR,
    META,
    WHOLE,
    DirtySet,
    Marks,
    PathChanges,
    RegionRange,
    SnapshotChain,
    SnapshotError,
    SnapshotId,
)
from tracking._snapshots import MAX_SNAPSHOTS, Taking, check_name

REGION = 4096


def _sid(name: str, seq: int = 0, *, auto: bool = False) -> SnapshotId:
    return SnapshotId(name, "ab" * 16, seq, 1.0, auto)


def _write(ino: int, region: int) -> Marks:
    return Marks(regions=((ino, b"f%d" % ino, region * REGION, REGION),))


def _regions(dirty: DirtySet, ino: int) -> set[int]:
    return {r for run in dirty.ranges(ino) for r in range(run.first, run.stop)}


# --- the chain ------------------------------------------------------------------------


def test_changes_since_an_older_snapshot_include_those_since_a_newer_one() -> None:
    chain: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
    assert chain.current() is None  # no snapshot: nothing to record
    chain.add(_sid("a"))
    chain.current().apply(_write(1, 1))
    chain.add(_sid("b"))
    chain.current().apply(_write(1, 2))
    assert _regions(chain.since("a"), 1) == {1, 2}
    assert _regions(chain.since("b"), 1) == {2}


def test_retiring_a_snapshot_keeps_its_changes_for_the_one_before() -> None:
    chain: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
    for name, region in (("a", 1), ("b", 2), ("c", 3)):
        chain.add(_sid(name))
        chain.current().apply(_write(1, region))
    chain.retire("b")
    assert [s.name for s in chain] == ["a", "c"]
    assert _regions(chain.since("a"), 1) == {1, 2, 3}
    chain.retire("a")  # the oldest: its record is freed
    assert _regions(chain.since("c"), 1) == {3}
    with pytest.raises(SnapshotError, match="no snapshot named a"):
        chain.since("a")


def test_a_new_snapshot_retires_the_automatic_points_before_it() -> None:
    chain: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
    chain.add(_sid("user"))
    chain.add(_sid("auto-1", auto=True), changes=DirtySet())
    chain.current().apply(_write(1, 5))
    chain.add(_sid("later"))
    assert [s.name for s in chain] == ["user", "later"]
    assert _regions(chain.since("user"), 1) == {5}


def test_names_are_unique_and_a_chain_is_bounded() -> None:
    chain: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
    chain.add(_sid("a"))
    with pytest.raises(SnapshotError, match="exists already"):
        chain.add(_sid("a"))
    for i in range(MAX_SNAPSHOTS - 1):
        chain.add(_sid(f"s{i}"))
    with pytest.raises(SnapshotError, match="delete one first"):
        chain.add(_sid("one-too-many"))


@pytest.mark.parametrize("name", ["", "-x", "a/b", "x" * 65, "sp ace", ".hidden"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(SnapshotError):
        check_name(name)


def test_a_chain_round_trips_through_its_payload() -> None:
    chain: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
    taking = Taking("a", 5.0, 0)
    taking.record(_write(2, 7))
    taking.replica_at(3)
    taking.commit(chain, "cd" * 16)
    chain.current().apply(_write(1, 1))
    again = SnapshotChain.from_payload(chain.to_payload(), DirtySet, DirtySet.from_payload)
    assert list(again) == list(chain)
    assert _regions(again.since("a"), 1) == {1}
    assert _regions(again.intercept("a"), 2) == {7}
    with pytest.raises(ValueError, match="not a snapshot chain"):
        SnapshotChain.from_payload({"snapshots": [{"id": {}}]}, DirtySet, DirtySet.from_payload)


def test_a_long_lived_snapshot_of_a_million_changed_regions_costs_megabytes() -> None:
    chain: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
    chain.add(_sid("a"))
    delta = chain.current()
    for region in range(0, 2_000_000, 2):  # a million regions, none adjacent: the worst case for runs
        delta.mark_regions(1, b"big", RegionRange(region, 1))
    assert delta.dirty_bytes == 1_000_000 * REGION
    saved = json.dumps(chain.to_payload())
    assert len(saved) < 32 * 1024 * 1024


# --- changes by path --------------------------------------------------------------------


def test_path_changes_list_in_order_and_resume_after_a_path() -> None:
    changes = PathChanges()
    changes.mark_regions(b"a/b", RegionRange(0, 3))
    changes.mark_entry(b"a/c", META)
    changes.mark(b"a-b", META)  # '-' sorts before '/': order is by component, not by byte
    changes.mark(b"z", DIR)
    paths = [c.path for c in changes.walk()]
    assert paths == [b"a", b"a/b", b"a/c", b"a-b", b"z"]
    for i, path in enumerate(paths):
        assert [c.path for c in changes.walk(path)] == paths[i + 1:]
    assert [c.path for c in changes.walk(b"a/bb")] == [b"a/c", b"a-b", b"z"]  # after a path not recorded


def test_a_renamed_directory_takes_its_record_along() -> None:
    changes = PathChanges()
    changes.mark_regions(b"d/x", RegionRange(4, 1))
    changes.move(b"d", b"e/d2")
    found = {c.path: c for c in changes.walk()}
    assert b"d/x" not in found
    assert found[b"e/d2/x"].runs == (RegionRange(4, 1),)
    assert found[b"e/d2"].flags & WHOLE
    assert found[b""].flags & DIR  # both directories' entries changed
    assert found[b"e"].flags & DIR


def test_path_changes_round_trip_and_merge() -> None:
    one, two = PathChanges(), PathChanges()
    one.mark_regions(b"f", RegionRange(0, 2))
    two.mark_regions(b"f", RegionRange(5, 1))
    two.mark_entry(b"g", META)
    one.merge(two)
    again = PathChanges.from_payload(one.to_payload())
    assert [(c.path, c.flags, c.runs) for c in again.walk()] == [(c.path, c.flags, c.runs) for c in one.walk()]
    assert {c.path: c.runs for c in again.walk()}[b"f"] == (RegionRange(0, 2), RegionRange(5, 1))
    with pytest.raises(ValueError, match="not a set of changes"):
        PathChanges.from_payload({"paths": [["zz", 0, []]]})


def test_asking_what_changed_since_an_older_snapshot_leaves_each_record_as_it_was() -> None:
    chain: SnapshotChain[PathChanges] = SnapshotChain(PathChanges)
    chain.add(_sid("old"))
    chain.current().mark_regions(b"d/f", RegionRange(0, 1))
    chain.add(_sid("new"))
    chain.current().mark_regions(b"d/f", RegionRange(9, 1))
    chain.current().mark(b"d/g", META)
    assert {c.path for c in chain.since("old").walk()} == {b"d/f", b"d/g"}
    (older, newer) = chain.deltas("old")
    assert [(c.path, c.runs) for c in older.walk()] == [(b"d/f", (RegionRange(0, 1),))]
    assert {c.path for c in newer.walk()} == {b"d/f", b"d/g"}


def test_a_path_of_very_many_runs_is_reported_whole() -> None:
    changes = PathChanges()
    for region in range(0, 40_000, 2):
        changes.mark_regions(b"f", RegionRange(region, 1))
    (change,) = changes.walk()
    assert change.flags & WHOLE
    assert change.runs == ()


PATHS = [b"a", b"a/x", b"a/x/y", b"b", b"b/x", b"c"]
path_ops = st.lists(st.one_of(
    st.tuples(st.just("regions"), st.sampled_from(PATHS), st.integers(0, 5)),
    st.tuples(st.just("mark"), st.sampled_from(PATHS), st.sampled_from([META, DIR, WHOLE])),
    st.tuples(st.just("entry"), st.sampled_from(PATHS), st.sampled_from([0, META])),
    st.tuples(st.just("move"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.sampled_from(["save", "rewrite"]), st.just(b""), st.just(0))), max_size=40)


def _covered(changes: PathChanges) -> dict[bytes, tuple[int, set[int]]]:
    return {c.path: (c.flags, {r for run in c.runs for r in range(run.first, run.stop)}) for c in changes.walk()}


@settings(max_examples=300, deadline=None)
@given(path_ops)
def test_a_copy_of_a_record_and_what_its_tees_caught_since_hold_the_record(ops) -> None:
    """What a replica saves of a snapshot's record: a copy now and then
    (``rewrite``), and since, what a tee of it caught (``save`` starts a
    new one): merged, they hold every change the record holds, moves
    included."""
    record, saved = PathChanges(), PathChanges()
    tees = [PathChanges()]
    record.tee(tees[-1])
    for op, path, arg in ops:
        if op == "regions":
            record.mark_regions(path, RegionRange(arg, 1))
        elif op == "mark":
            record.mark(path, arg)
        elif op == "entry":
            record.mark_entry(path, arg)
        elif op == "move" and not arg.startswith(path + b"/"):  # no directory moves into itself
            record.move(path, arg)
        elif op == "save":
            tees.append(PathChanges())
            record.tee(tees[-1])
        elif op == "rewrite":
            saved, tees = PathChanges(), [PathChanges()]
            saved.merge(record)
            record.tee(tees[-1])
    for tee in tees:
        saved.merge(tee)
    have = _covered(saved)
    for path, (flags, regions) in _covered(record).items():
        assert path in have, path
        assert flags & ~have[path][0] == 0, path
        assert regions <= have[path][1], path


def test_a_tee_catches_only_what_is_marked_while_it_is_on() -> None:
    record, tee = PathChanges(), PathChanges()
    record.mark_regions(b"d/f", RegionRange(1, 1))
    record.tee(tee)
    record.mark(b"g", META)
    record.move(b"d", b"e")  # the whole record of d arrives at e, in the tee too
    record.tee(None)
    record.mark(b"h", META)
    assert [(c.path, c.flags, c.runs) for c in tee.walk()] == [
        (b"", DIR, ()), (b"e", WHOLE, ()), (b"e/f", 0, (RegionRange(1, 1),)), (b"g", META, ())]


# --- the property ---------------------------------------------------------------------------

REGIONS = 6
FILE = 1


class Model:
    """A primary and a secondary holding one file of REGIONS regions, the
    stream between them, and each side's snapshot chain."""

    def __init__(self) -> None:
        self.primary = [0] * REGIONS
        self.replica = [0] * REGIONS
        self.version = 0
        self.next_seq = 1
        self.acked = 0
        self.applied = 0
        self.stream: list[tuple[int, str, int, int]] = []  # (seq, kind, region or name index, value)
        self.up = True
        self.mine: SnapshotChain[DirtySet] = SnapshotChain(DirtySet)
        self.theirs: SnapshotChain[PathChanges] = SnapshotChain(PathChanges)
        self.taking: Taking | None = None
        self.names = 0
        self.dirty = DirtySet()

    def record(self, marks: Marks) -> None:  # the primary's trackers, as the recorder feeds them
        current = self.mine.current()
        if current is not None:
            current.apply(marks)
        if self.taking is not None:
            self.taking.record(marks)

    def write(self, region: int) -> None:
        self.version += 1
        marks = _write(FILE, region)
        self.record(marks)
        self.primary[region] = self.version
        if self.up:
            self.stream.append((self.next_seq, "write", region, self.version))
            self.next_seq += 1
        else:
            self.dirty.apply(marks)

    def deliver(self) -> None:
        """The secondary applies the next frame it received."""
        pending = [f for f in self.stream if f[0] > self.applied]
        if not pending or not self.up:
            return
        seq, kind, what, value = pending[0]
        if kind == "write":
            current = self.theirs.current()
            if current is not None:
                current.mark_regions(b"f1", RegionRange(what, 1))
            self.replica[what] = value
        else:
            self.theirs.add(SnapshotId(f"s{what}", "00" * 16, seq, 0.0), changes=PathChanges())
        self.applied = seq

    def ack(self) -> None:
        if self.up:
            self.acked = self.applied
            self.stream = [f for f in self.stream if f[0] > self.acked]

    def step_snapshot(self) -> None:
        if not self.up:
            return
        if self.taking is None:
            self.taking = Taking(f"s{self.names}", 0.0, self.next_seq - 1)
        elif self.taking.seq is None:
            if self.acked >= self.taking.first_drain:
                self.taking.replica_at(self.next_seq)
                self.stream.append((self.next_seq, "snapshot", self.names, 0))
                self.next_seq += 1
        elif self.acked >= self.taking.seq:
            self.taking.commit(self.mine, "00" * 16)
            self.taking = None
            self.names += 1

    def cut(self) -> None:
        """The link fails: what was in flight is lost to the primary (the
        secondary may have applied some of it); an automatic point at the
        last acknowledged position, knowing what was in flight."""
        if not self.up:
            return
        self.up = False
        self.taking = None
        start = self.dirty.copy()
        for _, kind, region, _ in self.stream:
            if kind == "write":
                start.apply(_write(FILE, region))
                self.dirty.apply(_write(FILE, region))
        self.stream = []
        self.mine.add(SnapshotId(f"auto-{self.acked}", "00" * 16, self.acked, 0.0, auto=True), changes=start)

    def may_differ(self, name: str) -> set[int]:
        regions = _regions(self.mine.since(name), FILE)
        intercept = self.mine.intercept(name)
        if intercept is not None:
            regions |= _regions(intercept, FILE)
        if self.theirs.find(name) is not None:
            for change in self.theirs.since(name).walk():
                regions |= {r for run in change.runs for r in range(run.first, run.stop)}
        return regions


STEPS = st.lists(st.one_of(st.tuples(st.just("write"), st.integers(0, REGIONS - 1)),
                           st.tuples(st.sampled_from(["deliver", "ack", "snapshot", "cut"]), st.just(0))),
                 max_size=80)


@settings(max_examples=400, deadline=None)
@given(STEPS)
def test_what_differs_is_within_the_changes_since_a_common_snapshot_and_its_intercept_log(steps) -> None:
    model = Model()
    for step, arg in steps:
        if step == "write":
            model.write(arg)
        else:
            getattr(model, {"snapshot": "step_snapshot"}.get(step, step))()
        differ = {r for r in range(REGIONS) if model.primary[r] != model.replica[r]}
        for snapshot in model.mine:
            if snapshot.auto or model.theirs.find(snapshot.name) is not None:
                assert differ <= model.may_differ(snapshot.name), (snapshot, steps)


# --- the primary's record by path (a demoted store's) ------------------------------------


def test_by_path_keeps_regions_metadata_and_directories_under_their_paths() -> None:
    dirty = tracking.DirtySet()
    dirty.mark_regions(11, b"d/f", tracking.RegionRange(3, 2))
    dirty.mark_meta(12, b"d/g")
    dirty.mark_dir(10, b"d")
    changes = tracking.by_path(dirty, lambda path: pytest.fail("no heads were marked"))
    assert changes is not None
    got = {c.path: (c.flags, tuple((r.first, r.count) for r in c.runs)) for c in changes.walk()}
    assert got == {b"d": (tracking.DIR, ()), b"d/f": (0, ((3, 2),)), b"d/g": (tracking.META, ())}


def test_by_path_marks_the_heads_of_each_file_a_crash_left_unknown() -> None:
    dirty = tracking.DirtySet()
    dirty.mark_heads(10, b"d")
    changes = tracking.by_path(dirty, lambda path: [b"a", b"b"] if path == b"d" else [])
    assert changes is not None
    first = tracking.regions_for(0, tracking.EXTENT_SIZE)
    got = {c.path: (c.flags, tuple((r.first, r.count) for r in c.runs)) for c in changes.walk()}
    assert got == {b"d": (tracking.DIR, ()), b"d/a": (tracking.META, ((first.first, first.count),)),
                   b"d/b": (tracking.META, ((first.first, first.count),))}


def test_by_path_cannot_tell_everything_nor_a_file_never_seen_by_name() -> None:
    everything = tracking.DirtySet()
    everything.mark_everything("lost")
    assert tracking.by_path(everything, lambda path: []) is None
    unnamed = tracking.DirtySet()
    unnamed.mark_regions(7, tracking.UNNAMED, tracking.RegionRange(0, 1))
    assert tracking.by_path(unnamed, lambda path: []) is None


def test_a_rekeyed_chain_keeps_its_changes_under_the_new_numbers() -> None:
    chain = SnapshotChain(DirtySet)
    intercept = DirtySet()
    intercept.apply(_write(5, 1))
    chain.add(_sid("a", 1), intercept=intercept)
    current = chain.current()
    assert current is not None
    current.apply(_write(6, 2))
    chain.changed = False
    chain.rekey({5: 50, 6: 60})
    assert chain.changed
    assert _regions(chain.since("a"), 60) == {2}
    assert not _regions(chain.since("a"), 6)
    moved_intercept = chain.intercept("a")
    assert moved_intercept is not None
    assert _regions(moved_intercept, 50) == {1}
