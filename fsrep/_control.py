"""The control socket: a unix socket in the store's ``.fsrep/`` over which
``fsrep status``, ``fsrep-resync`` and the other tools talk to a running
daemon. One JSON object per line each way; what the objects say is
``_commands``'s (the requests, the table of handlers) and ``_status``'s (the
status records). This module only carries them.

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
from typing import Any, TypeVar

import trio

from ._commands import Request, StatusRequest
from ._config import META_DIR
from ._mounts import find_mount, is_dead
from ._status import DaemonStatus, Record, UnreadableReply

log = logging.getLogger(__name__)
SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024
DISCARD_TIMEOUT = 1.0  # seconds a client has to close after its reply

Handler = Callable[[Any], Awaitable[dict[str, Any]]]  # a parsed JSON request -> the reply object
ReplyT = TypeVar("ReplyT", bound=Record)


class ControlError(Exception):
    """Raised by the client when the daemon cannot be asked (it does not
    answer, or its reply is unreadable) or refuses the request; the message
    is one line for the operator."""


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
                await _discard_rest(stream)

    try:
        task_status.started()
        await trio.serve_listeners(one, [listener])
    finally:
        with contextlib.suppress(OSError):
            (meta_dir / SOCKET_NAME).unlink()


async def _discard_rest(stream: trio.SocketStream) -> None:
    """Say the reply is complete, and read (boundedly) what the client
    still sends: closing a unix socket with unread bytes resets it, and the
    client of a request too long would get that instead of its reply."""
    await stream.send_eof()
    left = MAX_REQUEST
    with trio.move_on_after(DISCARD_TIMEOUT):
        while left > 0 and (data := await stream.receive_some(65536)):
            left -= len(data)


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


def daemon_for(mountpoint: str) -> tuple[Path, DaemonStatus]:
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
        return meta, call(meta, StatusRequest())
    except DaemonGone:
        if is_dead(mount.mountpoint):  # asked only now: the stat of a live mount waits on its daemon
            raise DaemonGone(f"the daemon of {mountpoint} is gone (killed or crashed): run 'fsrep umount "
                             f"{mountpoint}', then mount it again") from None
        raise


def call(meta_dir: Path, req: Request[ReplyT], timeout: float = 10.0) -> ReplyT:
    """Ask the daemon of a store *req*; its reply record.

    Raises:
        DaemonGone: no daemon is listening.
        ControlError: it did not answer in time, refused the request (the
            message is its reason), or sent a reply this fsrep cannot read.
    """
    reply = request(meta_dir, req.to_json(), timeout)
    if "error" in reply:
        raise ControlError(str(reply["error"]))
    try:
        return req.reply.from_json(reply)  # type: ignore[return-value]  # the request names its reply type
    except UnreadableReply as exc:
        raise ControlError(f"the daemon's reply to {req.command} is not one this fsrep reads ({exc}); is the "
                           f"daemon of another fsrep version? remount to run this one") from None


def request(meta_dir: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request object to the daemon of a store and return its
    reply object, as they are on the wire (``call`` sends a request type and
    reads its reply record).

    Raises:
        DaemonGone: no daemon is listening.
        ControlError: it did not answer in time, or not with a JSON object.
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
        reply = json.loads(b"".join(chunks))
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise ControlError("the daemon sent an unreadable reply")
    return reply
