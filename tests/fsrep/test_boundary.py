"""The FUSE error boundary: what a handler raises becomes an errno, and the
count of requests under way (which decides whether an fsync may run on
the event loop) is right also when handlers fail."""

from __future__ import annotations

import errno

import pyfuse3
import pytest
import trio

import transport as tp
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


class _Handlers:
    """A handler object as the boundary sees it: told of internal faults."""

    def __init__(self) -> None:
        self.faults: list[tuple[str, tuple[object, ...], str]] = []

    def internal_fault(self, handler: str, args: tuple[object, ...], exc: Exception) -> None:
        self.faults.append((handler, args, type(exc).__name__))

    @fuse_errors
    async def write(self, fh: int, fail: BaseException) -> None:
        raise fail


@pytest.mark.parametrize(("fail", "code"), [
    (tp.InvalidPath(errno.ENAMETOOLONG, "a component longer than 255 bytes"), errno.ENAMETOOLONG),
    (tp.InvalidPath(errno.EINVAL, "an empty component"), errno.EINVAL),
    (OSError(errno.EXDEV, "another consistency group"), errno.EXDEV),
])
async def test_fsreps_own_refusals_give_the_kernels_errno_and_no_fault(fail: BaseException, code: int) -> None:
    handlers = _Handlers()
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await handlers.write(7, fail)
    assert caught.value.errno == code
    assert handlers.faults == []


async def test_an_internal_fault_is_eio_and_tells_the_handlers_object(caplog: pytest.LogCaptureFixture) -> None:
    handlers = _Handlers()
    with pytest.raises(pyfuse3.FUSEError) as caught:
        await handlers.write(7, KeyError("bug"))
    assert caught.value.errno == errno.EIO
    assert handlers.faults == [("write", (7, handlers.faults[0][1][1]), "KeyError")]
    assert "internal error in write" in caplog.text
