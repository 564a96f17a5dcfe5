"""The control socket: a unix socket in the store's ``.fsrep/`` over which
``fsrep status`` (and later resync and move) talk to a running daemon. One
JSON object per line each way.

The socket is bound and reached through ``/proc/self/fd/<dir>/`` so a long
store path never exceeds the 108-byte limit of unix socket addresses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from ._config import META_DIR
from ._mounts import find_mount, is_dead

log = logging.getLogger(__name__)
SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """Raised by the client when no daemon answers on the socket."""


class DaemonGone(ControlError):
    """Raised by the client when nothing listens on the socket: no daemon
    runs for the store (it was stopped, or it died)."""


@contextlib.contextmanager
def _short_address(meta_dir: Path) -> Iterator[str]:
    fd = os.open(meta_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


async def serve_control(meta_dir: Path, handler: Handler, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer requests until cancelled."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _short_address(meta_dir) as address:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        await sock.bind(address)
    os.chmod(meta_dir / SOCKET_NAME, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                request = await _read_line(stream)
                reply = await handler(json.loads(request))
            except (ValueError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reply = {"error": f"bad request: {exc}"}
            except Exception as exc:  # a request we did not foresee: answer it, never take the mount down
                log.exception("control request failed")
                reply = {"error": f"the request failed: {type(exc).__name__}: {exc} (see the daemon log)"}
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(reply).encode() + b"\n")

    try:
        task_status.started()
        await trio.serve_listeners(one, [listener])
    finally:
        with contextlib.suppress(OSError):
            (meta_dir / SOCKET_NAME).unlink()


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buf = b""
    while b"\n" not in buf:
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too long")
        data = await stream.receive_some(4096)
        if not data:
            break
        buf += data
    return buf.split(b"\n", 1)[0]


def daemon_for(mountpoint: str) -> tuple[Path, dict[str, Any]]:
    """The control directory of the daemon serving *mountpoint*, and its
    status.

    Raises:
        DaemonGone: no daemon serves the mount (the message says if it died).
        ControlError: not an fsrep mount, or its daemon does not answer.
    """
    mount = find_mount(mountpoint)
    if mount is None:
        raise ControlError(f"{mountpoint} is not an fsrep mount (see 'mount -t fuse.fsrep')")
    meta = Path(mount.store, META_DIR)
    try:
        reply = request(meta, {"cmd": "status"})
    except DaemonGone:
        if is_dead(mount.mountpoint):  # asked only now: the stat of a live mount waits on its daemon
            raise DaemonGone(f"the daemon of {mountpoint} is gone (killed or crashed): run 'fsrep umount "
                             f"{mountpoint}', then mount it again") from None
        raise
    if "error" in reply:
        raise ControlError(reply["error"])
    return meta, reply


def request(meta_dir: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the daemon of a store and return its reply.

    Raises:
        DaemonGone: no daemon is listening.
        ControlError: it did not answer in time.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, _short_address(meta_dir) as address:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            sock.sendall(json.dumps(message).encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonGone("no fsrep daemon is running for this store") from None
        except OSError as exc:
            raise ControlError(f"the daemon did not answer: {exc}") from None
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the daemon sent an unreadable reply") from None
