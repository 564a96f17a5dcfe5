"""The ordering core of one group: which changes are in flight, acknowledged
and durable on the secondary, by sequence number.

Sans-IO: no trio, no socket, no clock. The relationship feeds it what
happens (a frame queued, an ack, a durable report, a lost link) with the
time as a number, and turns what it returns into events for the callers
waiting. Every drain a later feature needs ("wait until everything up to
seq N is acknowledged": a snapshot, a failover, a move) is a ``Drain``
value checked here.

Invariants: ``durable_seq <= acked_seq < next_seq``; the in-flight queue
holds strictly increasing sequence numbers above ``acked_seq``; the marks
of an acknowledged change stay here until the secondary reports it
durable, so a secondary that crashes and comes back behind gets them back
as dirty.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass

import tracking

NO_MARKS = tracking.Marks()
OP_OVERHEAD = 256  # bytes an operation without data counts for in the semi-sync budget


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A point in a group's history: the generation (hex id) and the
    sequence number within the operation stream."""

    generation: str
    seq: int

    def __str__(self) -> str:
        return f"seq {self.seq} of generation {self.generation[:8]}"


@dataclass(slots=True, eq=False)
class InFlight:
    """One frame sent and not yet acknowledged. ``ok`` is None while in
    flight, then True (acknowledged) or False (the link was lost first)."""

    seq: int
    nbytes: int
    marks: tracking.Marks = NO_MARKS
    barrier: bool = False
    ok: bool | None = None
    grace: float = 0.0  # seconds the secondary may take beyond the ack timeout (a clone copying its data)


@dataclass(frozen=True, slots=True)
class Drain:
    """Everything up to *seq* acknowledged (or failed with the link)."""

    seq: int


class Pipeline:
    """Sequence numbers and the in-flight queue of one group."""

    def __init__(self, last_seq: int) -> None:
        self.next_seq = last_seq + 1
        self.acked_seq = last_seq
        self.durable_seq = last_seq
        self._in_flight: collections.deque[InFlight] = collections.deque()
        self._not_durable: collections.deque[tuple[int, tracking.Marks]] = collections.deque()
        self.bytes_in_flight = 0
        self.last_progress = 0.0  # when an ack last came, or the queue last became non-empty

    def __len__(self) -> int:
        return len(self._in_flight)

    @property
    def first(self) -> InFlight | None:
        return self._in_flight[0] if self._in_flight else None

    @property
    def last(self) -> InFlight | None:
        return self._in_flight[-1] if self._in_flight else None

    @property
    def lag_bytes(self) -> int:
        """What semi-sync's byte budget counts: data in flight plus a fixed
        cost per operation."""
        return self.bytes_in_flight + OP_OVERHEAD * len(self._in_flight)

    def restart_at(self, seq: int) -> None:
        """A new session continues from the replica's position *seq*
        (nothing may be in flight)."""
        assert not self._in_flight, "a session restarts only when nothing is in flight"
        self.next_seq = seq + 1
        self.acked_seq = seq

    def add(self, entry: InFlight, now: float) -> None:
        """Queue *entry*, sent under ``entry.seq`` (the next number, or one
        after a gap the caller made on purpose)."""
        if entry.seq < self.next_seq:
            raise ValueError(f"seq {entry.seq} was used already (next is {self.next_seq})")
        if not self._in_flight:
            self.last_progress = now
        self.next_seq = entry.seq + 1
        self._in_flight.append(entry)
        self.bytes_in_flight += entry.nbytes

    def on_ack(self, seq: int, now: float) -> list[InFlight]:
        """Acks are cumulative: everything up to *seq* is acknowledged.
        Returns the entries that completed."""
        done = []
        while self._in_flight and self._in_flight[0].seq <= seq:
            entry = self._in_flight.popleft()
            self.bytes_in_flight -= entry.nbytes
            entry.ok = True
            done.append(entry)
            if entry.marks:
                self._not_durable.append((entry.seq, entry.marks))
        self.acked_seq = max(self.acked_seq, seq)
        self.last_progress = now
        return done

    def on_durable(self, seq: int) -> None:
        """The secondary made everything up to *seq* durable."""
        self.durable_seq = max(self.durable_seq, seq)
        while self._not_durable and self._not_durable[0][0] <= seq:
            self._not_durable.popleft()

    def lost(self) -> list[InFlight]:
        """The link is gone: every entry in flight failed. Returns them (the
        caller marks their changes dirty and wakes their waiters)."""
        failed = list(self._in_flight)
        self._in_flight.clear()
        self.bytes_in_flight = 0
        for entry in failed:
            entry.ok = False
        return failed

    def lost_by_replica(self, replica_seq: int) -> list[tracking.Marks]:
        """The secondary came back at *replica_seq*, behind what it
        acknowledged: the marks of the acknowledged changes it lost."""
        return [marks for seq, marks in self._not_durable if seq > replica_seq]

    def rekey(self, inodes: Mapping[int, int]) -> None:
        """The marks kept of changes not yet durable there, under the inode
        numbers of the file system the group's data was moved to."""
        self._not_durable = collections.deque((seq, marks.rekeyed(inodes)) for seq, marks in self._not_durable)
        for entry in self._in_flight:
            entry.marks = entry.marks.rekeyed(inodes)

    def unsettled_marks(self) -> list[tracking.Marks]:
        """Marks whose fate a crash of this daemon would leave unknown: in
        flight, or acknowledged but not durable on the secondary."""
        return [e.marks for e in self._in_flight if e.marks] + [marks for _, marks in self._not_durable]

    def overdue(self, now: float, timeout: float) -> bool:
        """Something is in flight and no ack came for *timeout* seconds
        (plus the grace of the oldest change in flight: the one the
        secondary is applying)."""
        return bool(self._in_flight) and now - self.last_progress > timeout + self._in_flight[0].grace

    def waiting_since(self) -> float | None:
        """When the oldest unacknowledged change was waited for, if any."""
        return self.last_progress if self._in_flight else None

    def drain(self) -> Drain:
        """A drain of everything sent so far (not what is sent later)."""
        return Drain(self.next_seq - 1)

    def drained(self, drain: Drain) -> bool:
        return not self._in_flight or self._in_flight[0].seq > drain.seq

    def blocker(self, drain: Drain) -> InFlight | None:
        """The newest entry the drain waits for; None when it is drained."""
        for entry in reversed(self._in_flight):
            if entry.seq <= drain.seq:
                return entry
        return None
