"""The names fsrep keeps for itself at every group root: RESERVED, which
no client reaches, and below it STAGING, where both sides of a group name
its clone backups (``_clone_backups``) — each side maps it to a directory
outside the group's tree (``Tree.stage_in``)."""

from __future__ import annotations

import os

RESERVED = b".fsrep"
STAGING = RESERVED + b"/clones"


def staged(name: str) -> bytes:
    """The path both sides give clone backup *name*."""
    return STAGING + b"/" + os.fsencode(name)


def is_staged(path: bytes) -> bool:
    return path.startswith(STAGING + b"/")
