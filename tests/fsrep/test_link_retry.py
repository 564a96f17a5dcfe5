"""The link loop outlives any failure of one attempt or one session."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import trio

import transport as tp
from fsrep._config import GroupRecord
from fsrep._link import Link, Timeouts
from tests.fsrep.test_splitter import KEY, InProcessSecondary


class FailingOnce:
    """A link owner whose first judgement of a replica hits a bug."""

    def __init__(self) -> None:
        self.connections = 0
        self.losses: list[str] = []
        self.second = trio.Event()

    def connected(self, conn: tp.Connection, welcome: tp.Welcome) -> None:
        self.connections += 1
        if self.connections == 1:
            raise RuntimeError("a bug in judging the replica")
        self.second.set()

    def received(self, conn: tp.Connection, event: tp.Frame) -> None:
        pass

    def overdue(self, now: float) -> bool:
        return False

    def link_lost(self, reason: str) -> None:
        self.losses.append(reason)

    def start_session_tasks(self, nursery: trio.Nursery) -> None:
        pass


async def test_an_attempt_that_fails_with_a_bug_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = InProcessSecondary(tmp_path / "secondary")
    owner = FailingOnce()
    record = GroupRecord(id=str(uuid.uuid4()), path="", policy="sync", secondary="")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        link = Link(owner, record.id, ("127.0.0.1", server.port), KEY, record.group_id,
                    Timeouts(backoff_min=0.01, backoff_max=0.05))
        async with link.running():
            with trio.fail_after(10):
                await owner.second.wait()
            assert link.conn is not None
            assert owner.connections == 2
            assert link.last_error == ""  # cleared by the attempt that worked
            assert "internal error while connecting" in caplog.text
            link.close()
            with trio.fail_after(10):
                await link.stopped()
        nursery.cancel_scope.cancel()
