"""The splitter against an in-process secondary over real TCP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

import transport as tp
from fsrep import _snapshots as snapshots_module
from fsrep._config import GroupRecord, GroupStore
from fsrep._secondary import Secondary
from fsrep._splitter import Relationship, Timeouts
from fsrep._state import RelationshipState

KEY = b"k" * 32


class InProcessSecondary:
    def __init__(self, store: Path) -> None:
        store.mkdir()
        self.secondary = Secondary(store, KEY)
        self.scope = trio.CancelScope()
        self.port = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await self.secondary.serve(listeners)


def _relationship(tmp_path: Path, port: int, policy: str) -> Relationship:
    store = tmp_path / "primary"
    store.mkdir()
    record = GroupRecord(id=str(uuid.uuid4()), path="", policy=policy, secondary=f"127.0.0.1:{port}")
    return Relationship(record, GroupStore(str(store)), KEY, Timeouts(ack=2, ping=0.5))


@contextlib.asynccontextmanager
async def connected(tmp_path: Path, *, schedule: bool = True
                    ) -> AsyncIterator[tuple[InProcessSecondary, Relationship, trio.Nursery]]:
    """A sync relationship, connected and served, to an in-process secondary
    (with no snapshot schedule of its own unless *schedule*)."""
    server = InProcessSecondary(tmp_path / "secondary")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        rel = _relationship(tmp_path, server.port, "sync")
        if not schedule:
            rel.snapshots.interval = 0  # serve starts none: the test runs the one it looks at
        await rel.connect()
        nursery.start_soon(rel.serve)
        with trio.fail_after(10):  # the new replica learns the primary's generation first
            await rel.stream.all_acked()
        yield server, rel, nursery
        nursery.cancel_scope.cancel()


def _stale_on_disk(rel: Relationship) -> bool:
    groups = GroupStore(str(rel.ledger.groups.dir.parent.parent))
    path = groups.file(rel.record)
    return path.exists() and json.loads(path.read_text())["payload"]["stale"]


async def test_split_applies_and_queues_without_a_checkpoint_in_sequence_order(tmp_path: Path) -> None:
    async with connected(tmp_path) as (server, rel, nursery):
        assert rel.state is RelationshipState.IN_SYNC
        first = rel.pipeline.next_seq  # after the new replica learned the primary's generation
        applied: list[int] = []
        pendings = []
        with trio.testing.assert_no_checkpoints():
            def create(seq: int | None) -> tp.Operation:
                applied.append(seq)
                return tp.Create(seq=seq, path=b"f", mode=0o644, uid=0, gid=0)
            pendings.append(rel.split(create))
            for i in range(100):
                def write(seq: int | None, i: int = i) -> tp.Operation:
                    applied.append(seq)
                    return tp.Write(seq=seq, path=b"f", offset=i, data=bytes([i]))
                pendings.append(rel.split(write))
        assert applied == list(range(first, first + 101))
        assert rel.statistics().ops_in_flight == 101
        for pending in pendings:
            await rel.wait(pending)
        assert rel.pipeline.acked_seq == first + 100
        assert rel.statistics().ops_in_flight == 0
        replica = tmp_path / "secondary" / rel.record.id / "f"
        assert replica.read_bytes() == bytes(range(100))


async def test_sync_marks_stale_durably_before_an_unreplicated_change(tmp_path: Path) -> None:
    async with connected(tmp_path) as (server, rel, nursery):
        server.scope.cancel()
        with trio.fail_after(10):
            while rel.state is not RelationshipState.OUT_OF_SYNC:  # noqa: ASYNC110 - no event for a state change
                await trio.sleep(0.01)
        seen: list[object] = []

        def apply(seq: int | None) -> tp.Operation:
            seen.append((seq, _stale_on_disk(rel)))
            return tp.Create(seq=seq or 0, path=b"g", mode=0o644, uid=0, gid=0)
        assert rel.split(apply) is None
        assert seen == [(None, True)]


async def test_strict_refuses_before_applying_when_not_in_sync(tmp_path: Path) -> None:
    rel = _relationship(tmp_path, 9, "strict")  # never connected
    called = []
    with pytest.raises(OSError) as info:
        rel.split(lambda seq: called.append(seq))
    assert info.value.errno == errno.EIO
    assert called == []


async def test_a_failed_local_change_uses_no_sequence_number(tmp_path: Path) -> None:
    async with connected(tmp_path) as (server, rel, nursery):
        first = rel.pipeline.next_seq

        def fail(seq: int | None) -> tp.Operation:
            raise FileNotFoundError(errno.ENOENT, "gone")
        with pytest.raises(FileNotFoundError):
            rel.split(fail)
        pending = rel.split(lambda seq: tp.MkDir(seq=seq, path=b"d", mode=0o755, uid=0, gid=0))
        assert pending.seq == first
        await rel.wait(pending)
        assert os.path.isdir(tmp_path / "secondary" / rel.record.id / "d")


async def test_the_schedule_takes_a_first_snapshot_soon_and_then_keeps_its_interval(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    monkeypatch.setattr(snapshots_module, "FIRST_SNAPSHOT_DELAY", 0.1)
    async with connected(tmp_path, schedule=False) as (server, rel, nursery):
        rel.snapshots.interval = 3600.0
        assert rel.snapshots.next_turn() == 0.1  # no snapshot taken yet: a common point soon
        turned = trio.Event()
        one_turn = rel.snapshots.scheduled

        async def turn() -> None:  # a turn may find the group not InSync for a moment: the next comes as soon
            await one_turn()
            if len(rel.snapshots.chain):
                turned.set()

        monkeypatch.setattr(rel.snapshots, "scheduled", turn)
        nursery.start_soon(rel.snapshots.run_schedule)
        with trio.fail_after(10):
            await turned.wait()
        assert [sid.name[:6] for sid in rel.snapshots.chain] == ["sched-"]
        assert rel.snapshots.next_turn() == 3600.0  # then the interval
