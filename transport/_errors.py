"""Errors of the replication protocol, named by whose fault they are."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error the codec and session raise.

    After any ProtocolError the session is in the ERROR state and the
    connection must be dropped.
    """


class LocalProtocolError(ProtocolError):
    """Raised when *this* side tried to do something the protocol forbids
    (a bug in fsrep, never the peer's fault)."""


class InvalidPath(LocalProtocolError, OSError):
    """Raised when a path cannot be named in a frame: a component longer
    than NAME_MAX or a path longer than MAX_PATH (errno ENAMETOOLONG), or one
    that is absolute or has empty, ``.``, ``..`` or NUL parts (EINVAL).

    It is an OSError too, with the errno the kernel gives for such a name,
    so the FUSE layer answers the caller with it rather than EIO."""

    def __init__(self, code: int, message: str) -> None:
        OSError.__init__(self, code, message)


class RemoteProtocolError(ProtocolError):
    """Raised when the peer sent bytes that break the protocol: a malformed,
    oversized, unknown or out-of-order frame, or a failed authentication."""


class AuthenticationError(RemoteProtocolError):
    """Raised when the peer's proof of the pre-shared key is wrong."""


class LinkDown(Exception):
    """Raised by the stream layer when the connection to the peer is gone:
    closed, reset, silent for too long, or dropped after a protocol error."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of *group* that is not itself a group: what an
    ``except*`` caught through nested nurseries (whose own text is only
    " (1 sub-exception)")."""
    found: BaseException = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


class TLSFileError(Exception):
    """Raised when a TLS certificate, private key or CA file cannot be read
    or used; the message names the file."""
