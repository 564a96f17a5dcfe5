"""Generation ids: which side of a relationship holds the newest data.

Each group keeps a history of generation ids (16 random bytes each, oldest
first) on both sides. The primary starts a new generation when the group goes
OutOfSync (its data moves ahead of the replica's) and when a resync completes
(both sides meet again); a promoted replica would start its own. The
secondary records the primary's generations in order, as operations of the
stream, so its history says which state of the primary its data matches.

Comparing the two histories at the handshake tells the direction a resync
may go — or that it cannot be told, and nothing may be resynced. The
transport carries a history as ``pack`` lays it out and checks it with
``unpack``, so these sizes are the wire's too.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence

GENERATION_SIZE = 16
MAX_GENERATIONS = 32


class Verdict(enum.Enum):
    SAME = "same"  # both at the same generation
    PRIMARY_NEWER = "primary newer"  # the replica's generation is an older one of the primary's
    REPLICA_NEWER = "replica newer"  # the primary's generation is an older one of the replica's
    NO_HISTORY = "no history"  # the replica records none (new, or from before generations)
    UNRELATED = "unrelated"  # neither history contains the other's: cannot tell


def new_generation() -> bytes:
    return uuid.uuid4().bytes


def extend(history: Sequence[bytes], generation: bytes) -> list[bytes]:
    """*history* with *generation* appended, keeping the newest MAX_GENERATIONS."""
    if len(generation) != GENERATION_SIZE:
        raise ValueError(f"a generation id is {GENERATION_SIZE} bytes")
    return [*history, generation][-MAX_GENERATIONS:]


def compare(primary: Sequence[bytes], replica: Sequence[bytes]) -> Verdict:
    """Which side is newer, judged by the current (last) generations."""
    if not replica:
        return Verdict.NO_HISTORY
    if not primary:
        return Verdict.UNRELATED
    if primary[-1] == replica[-1]:
        return Verdict.SAME
    if replica[-1] in primary[:-1]:
        return Verdict.PRIMARY_NEWER
    if primary[-1] in replica[:-1]:
        return Verdict.REPLICA_NEWER
    return Verdict.UNRELATED


def pack(history: Sequence[bytes]) -> bytes:
    return b"".join(history)


def unpack(blob: bytes) -> list[bytes]:
    """Raises ValueError when *blob* is not a list of generation ids."""
    if len(blob) % GENERATION_SIZE or len(blob) > MAX_GENERATIONS * GENERATION_SIZE:
        raise ValueError(f"a generation history is at most {MAX_GENERATIONS} ids of {GENERATION_SIZE} bytes")
    return [bytes(blob[i:i + GENERATION_SIZE]) for i in range(0, len(blob), GENERATION_SIZE)]
