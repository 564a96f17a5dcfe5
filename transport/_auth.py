"""Challenge-response over a pre-shared key (HMAC-SHA256, mutual).

Each side proves it holds the key by MACing both nonces and the group id,
with a role label so a proof can never be reflected back at its sender.
"""

from __future__ import annotations

import hashlib
import hmac

MIN_KEY_BYTES = 32


def proof(key: bytes, role: bytes, group_id: bytes, primary_nonce: bytes, secondary_nonce: bytes) -> bytes:
    """The MAC that *role* (b"primary" or b"secondary") sends."""
    msg = b"fsrep-auth-v1\0" + role + b"\0" + group_id + primary_nonce + secondary_nonce
    return hmac.new(key, msg, hashlib.sha256).digest()


def proof_matches(expected: bytes, received: bytes) -> bool:
    """Compare in constant time."""
    return hmac.compare_digest(expected, received)
