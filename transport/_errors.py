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


class RemoteProtocolError(ProtocolError):
    """Raised when the peer sent bytes that break the protocol: a malformed,
    oversized, unknown or out-of-order frame, or a failed authentication."""


class AuthenticationError(RemoteProtocolError):
    """Raised when the peer's proof of the pre-shared key is wrong."""


class LinkDown(Exception):
    """Raised by the stream layer when the connection to the peer is gone:
    closed, reset, silent for too long, or dropped after a protocol error."""
