"""The FUSE error boundary: what a handler raises becomes an errno, and the
count of requests under way (which decides whether an fsync may run on
the event loop) is right also when handlers fail."""

from __future__ import annotations

import errno

import pyfuse3
import pytest
import trio

from fsrep._boundary import fuse_errors, requests_running


@fuse_errors
async def _handler(started: trio.Event, release: trio.Event, seen: list[int], fail: BaseException | None) -> None:
    started.set()
    await release.wait()
    seen.append(requests_running())
    if fail is not None:
        raise fail


@pytest.mark.parametrize(("fail", "code"), [(None, None), (OSError(errno.ENOSPC, "full"), errno.ENOSPC),
                                            (RuntimeError("bug"), errno.EIO)])
async def test_requests_are_counted_while_they_run(fail: BaseException | None, code: int | None) -> None:
    seen: list[int] = []
    codes: list[int | None] = []
    release = trio.Event()

    async def one(started: trio.Event) -> None:
        try:
            await _handler(started, release, seen, fail)
            codes.append(None)
        except pyfuse3.FUSEError as exc:
            codes.append(exc.errno)

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            started = trio.Event()
            nursery.start_soon(one, started)
            await started.wait()
        assert requests_running() == 2
        release.set()
    assert seen == [2, 1]  # the first to finish still sees the other one
    assert codes == [code, code]
    assert requests_running() == 0
