"""Telling systemd how a daemon is doing (``Type=notify`` units): the
sd_notify datagram, sent to ``$NOTIFY_SOCKET`` with the standard library
only.

A daemon started by anything else has no ``$NOTIFY_SOCKET``, and every
call is then nothing. A message that cannot be sent is logged once and
dropped: systemd's view must never stop the daemon.

Caveats:
- ``fsrep mount`` without ``--foreground`` hands the work to a child, which
  sends the messages from its own pid: a unit running it needs
  ``NotifyAccess=all``. The shipped units run ``--foreground``.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)
NOTIFY_SOCKET = "NOTIFY_SOCKET"
_failed = False


def notify(**fields: str) -> bool:
    """Send one notification, e.g. ``notify(READY="1", STATUS="...")``.

    Returns:
        Whether it was sent (False without ``$NOTIFY_SOCKET``).
    """
    global _failed
    address = os.environ.get(NOTIFY_SOCKET, "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # the abstract namespace
    message = "".join(f"{name}={value}\n" for name, value in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        if not _failed:
            _failed = True
            log.warning("cannot notify systemd at %s (%s); the service manager may not see this daemon's state",
                        os.environ.get(NOTIFY_SOCKET), exc.strerror or exc)
        return False
    return True


def ready(status: str) -> None:
    """The daemon serves: systemd's start job is done."""
    notify(READY="1", STATUS=status, MAINPID=str(os.getpid()))


def stopping(status: str) -> None:
    """The daemon was told to stop and drains what is in flight."""
    notify(STOPPING="1", STATUS=status)
