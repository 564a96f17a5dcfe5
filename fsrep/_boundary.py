"""The one error boundary of the FUSE layer. pyfuse3 lets a handler raise
only FUSEError; anything else would take the main loop down."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import pyfuse3

log = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")


_running = 0


def requests_running() -> int:
    """FUSE requests whose handler has started and not yet returned (the
    caller's own included): whether anything else waits on the event loop."""
    return _running


def fuse_errors(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn OSError into FUSEError(errno) — fsrep's own refusals of a name
    (``transport.InvalidPath``: ENAMETOOLONG, EINVAL) are OSErrors too — and
    any other exception into a logged EIO, so a bug fails one request
    instead of the mount. The handler's object is told of such a fault
    (``internal_fault(handler_name, args, exc)``, when it has one): a change
    may have been half applied, so the group it touched gets a checksum
    resync and shows why in ``fsrep status``."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        global _running
        _running += 1
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception as exc:
            log.exception("internal error in %s; the request fails with EIO", handler.__name__)
            notify = getattr(args[0], "internal_fault", None) if args else None
            if notify is not None:
                try:
                    notify(handler.__name__, args[1:], exc)
                except Exception:
                    log.exception("cannot mark the group of the failed %s for a checksum resync", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            _running -= 1

    return wrapper
