"""What a primary does with a replica it has just connected to: the
handshake verdict, as one pure function of what each side knows.

Every rule is a row in ``decide``; promote, failback, split brain and moves
add rows here, not branches in the link code. The table test
(tests/fsrep/test_verdict.py) covers each row.

The order of the rows matters: a history that says the replica is newer,
or unrelated, wins over any sequence number (those count within one
history only).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import tracking

G = tracking.Verdict


class Decision(enum.Enum):
    IN_SYNC = "in sync"
    QUICK = "quick resync"  # what the dirty set names
    SNAPSHOT = "resync from a snapshot"  # tracking cannot say what differs: what changed since a common snapshot
    CHECKSUM = "checksum resync"  # nor can a snapshot: compare the whole tree by digest
    FULL = "full resync"  # the operator asked to discard the replica's side
    REFUSE_WRONG_WAY = "refuse: wrong way"  # the replica is newer: resyncing would lose its changes
    REFUSE_CANNOT_TELL = "refuse: cannot tell"  # unrelated histories

    @property
    def refused(self) -> bool:
        return self in (Decision.REFUSE_WRONG_WAY, Decision.REFUSE_CANNOT_TELL)


@dataclass(frozen=True, slots=True)
class Known:
    """What the primary knows at the handshake."""

    generations: Sequence[bytes]  # its history, oldest first
    acked_seq: int
    durable_seq: int  # the secondary reported everything up to here durable
    next_seq: int
    stale: bool  # the replica lacks changes (the durable stale mark)
    may_be_ahead: bool = False  # after a crash here: the replica may hold changes never counted
    full_asked: bool = False  # a full resync is queued (the operator discards the replica's side)
    snapshot: str = ""  # the newest snapshot both sides hold (or the automatic point): a resync can start there
    promoted_from: bytes = b""  # this side was promoted from a replica that held the old primary at this generation


@dataclass(frozen=True, slots=True)
class Reported:
    """What the replica reported in its Welcome."""

    last_seq: int
    fresh: bool  # an empty replica: new, or its directory was removed
    generations: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    reason: str
    lost_after: int | None = None  # the replica lost the acknowledged changes after this seq: dirty again
    tell_generation: bool = False  # the replica missed our latest Generation frame


def decide(known: Known, replica: Reported) -> Verdict:
    history = tracking.generations.compare(known.generations, replica.generations)
    if history is G.REPLICA_NEWER or (history is G.UNRELATED and not (replica.fresh or replica.last_seq == 0)):
        if known.full_asked:
            return Verdict(Decision.FULL, "a full resync was asked: the replica's changes are discarded")
        if history is G.REPLICA_NEWER:
            return Verdict(Decision.REFUSE_WRONG_WAY, "the replica holds newer data than this primary (it was "
                           f"written to as a primary after generation {known.generations[-1].hex()})")
        return Verdict(Decision.REFUSE_CANNOT_TELL, f"the replica's generation {replica.generations[-1].hex()} "
                       "is not in this primary's history, nor ours in its: cannot tell which side is newer")
    if _old_primary(known, replica):
        # Both sides went on from the same seq, each in its own direction: seqs say nothing across them.
        reason = (f"the replica is the old primary (at generation {replica.generations[-1].hex()[:8]}, from before "
                  f"this side was promoted)")
        if known.snapshot and not replica.fresh:
            return Verdict(Decision.SNAPSHOT, f"{reason}; resync from common snapshot {known.snapshot}",
                           tell_generation=True)
        return Verdict(Decision.CHECKSUM, f"{reason} and no common snapshot: compare the whole tree by digest",
                       tell_generation=True)
    tell = history is not G.SAME
    seq = replica.last_seq
    if known.durable_seq <= seq < known.acked_seq and not replica.fresh:
        # A fresh replica is empty: the marks kept for a crash of the secondary cover only what was not yet
        # durable there, never all it lacks.
        return Verdict(Decision.QUICK, f"the secondary came back at seq {seq}, behind {known.acked_seq}: it lost "
                       "changes it had not made durable", lost_after=seq, tell_generation=tell)
    if not (known.acked_seq <= seq and (seq < known.next_seq or known.may_be_ahead)):
        # The replica lost acknowledged changes, or holds changes this primary never sent.
        reason = (f"the secondary has an empty replica (new, or its directory was removed), primary acknowledged "
                  f"{known.acked_seq}" if replica.fresh else
                  f"replica at seq {seq}, primary acknowledged {known.acked_seq}")
        if known.snapshot and not replica.fresh:
            return Verdict(Decision.SNAPSHOT, f"{reason}; resync from snapshot {known.snapshot}",
                           tell_generation=tell)
        return Verdict(Decision.CHECKSUM, reason, tell_generation=tell)
    if known.stale:
        return Verdict(Decision.QUICK, "the replica is stale", tell_generation=tell)
    return Verdict(Decision.IN_SYNC, "replica matches the primary", tell_generation=tell)


def _old_primary(known: Known, replica: Reported) -> bool:
    """Whether the replica stands where this side stood when it was
    promoted, or before: it is the old primary (or its replica), and may
    hold changes this side never had since."""
    if not known.promoted_from or not replica.generations or known.promoted_from not in known.generations:
        return False
    upto = list(known.generations).index(known.promoted_from)
    return replica.generations[-1] in known.generations[:upto + 1]
