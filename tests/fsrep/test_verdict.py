"""The handshake verdict: one row per rule."""

from __future__ import annotations

import pytest

from fsrep._verdict import Decision, Known, Reported, decide

OLD, MID, NEW, OTHER = (bytes([n]) * 16 for n in (1, 2, 3, 9))
D = Decision


def known(*, history: tuple[bytes, ...] = (OLD, MID), acked: int = 10, durable: int = 10, next_seq: int = 11,
          stale: bool = False, ahead: bool = False, full: bool = False, snapshot: str = "",
          promoted_from: bytes = b"") -> Known:
    return Known(history, acked, durable, next_seq, stale, ahead, full, snapshot, promoted_from)


PROMOTED = known(history=(OLD, MID, NEW), stale=True, snapshot="s1", promoted_from=MID)  # promoted from MID, now NEW


def replica(last_seq: int = 10, *, fresh: bool = False, history: tuple[bytes, ...] = (OLD, MID)) -> Reported:
    return Reported(last_seq, fresh, history)


ROWS = [
    # (what, known, reported, decision, lost_after, tell_generation)
    ("same history and position", known(), replica(), D.IN_SYNC, None, False),
    ("replica applied what was in flight", known(acked=8, durable=8), replica(10), D.IN_SYNC, None, False),
    ("replica missed our last generation", known(history=(OLD, MID, NEW)), replica(), D.IN_SYNC, None, True),
    ("a new replica learns our generation", known(acked=0, durable=0, next_seq=1),
     replica(0, fresh=True, history=(OTHER,)), D.IN_SYNC, None, True),
    ("stale: the dirty set says what differs", known(stale=True), replica(), D.QUICK, None, False),
    ("secondary lost what it had not made durable", known(durable=6), replica(7), D.QUICK, 7, False),
    ("lost non-durable changes, stale already", known(durable=6, stale=True), replica(6), D.QUICK, 6, False),
    ("replica lost durable, acknowledged changes", known(durable=9), replica(5), D.CHECKSUM, None, False),
    ("replica ahead of anything sent", known(), replica(12), D.CHECKSUM, None, False),
    ("replica lost durable changes; a common snapshot", known(durable=9, snapshot="s1"), replica(5), D.SNAPSHOT,
     None, False),
    ("replica ahead; a common snapshot", known(snapshot="s1"), replica(12), D.SNAPSHOT, None, False),
    ("an emptied replica has no snapshot of use", known(snapshot="s1"), replica(0, fresh=True), D.CHECKSUM, None,
     False),
    ("ahead after a crash here is expected", known(stale=True, ahead=True), replica(50), D.QUICK, None, False),
    ("an emptied replica", known(), replica(0, fresh=True), D.CHECKSUM, None, False),
    ("an emptied replica, behind but fresh", known(durable=6), replica(7, fresh=True), D.CHECKSUM, None, False),
    ("replica written to as a primary", known(), replica(history=(OLD, MID, NEW)), D.REFUSE_WRONG_WAY, None,
     False),
    ("unrelated histories", known(), replica(history=(OTHER,)), D.REFUSE_CANNOT_TELL, None, False),
    ("unrelated but the replica is empty", known(), replica(0, history=(OTHER,)), D.CHECKSUM, None, True),
    ("newer replica, full resync asked", known(full=True), replica(history=(OLD, MID, NEW)), D.FULL, None,
     False),
    ("unrelated, full resync asked", known(full=True), replica(history=(OTHER,)), D.FULL, None, False),
    ("promoted: the old primary, behind our seq", PROMOTED, replica(4), D.SNAPSHOT, None, True),
    ("promoted: the old primary, with a tail we never had", PROMOTED, replica(40), D.SNAPSHOT, None, True),
    ("promoted: an older state of the old primary", PROMOTED, replica(history=(OLD,)), D.SNAPSHOT, None, True),
    ("promoted, no common snapshot", known(history=(OLD, MID, NEW), stale=True, promoted_from=MID), replica(40),
     D.CHECKSUM, None, True),
    ("promoted: the old primary wrote on alone (split brain)", PROMOTED, replica(history=(OLD, MID, OTHER)),
     D.REFUSE_CANNOT_TELL, None, False),
    ("promoted: the replica met us since", PROMOTED, replica(10, history=(OLD, MID, NEW)), D.QUICK, None, False),
]


@pytest.mark.parametrize(("what", "primary", "reported", "decision", "lost_after", "tell"), ROWS,
                         ids=[row[0] for row in ROWS])
def test_each_row_of_the_verdict(what: str, primary: Known, reported: Reported, decision: Decision,
                                 lost_after: int | None, tell: bool) -> None:
    verdict = decide(primary, reported)
    assert (verdict.decision, verdict.lost_after, verdict.tell_generation) == (decision, lost_after, tell)
    assert verdict.reason


def test_every_decision_has_a_row() -> None:
    assert {row[3] for row in ROWS} == set(Decision)


def test_a_resync_from_a_snapshot_names_it() -> None:
    assert "resync from snapshot hourly-1" in decide(known(snapshot="hourly-1"), replica(12)).reason


def test_refusals_say_why_in_the_operators_terms() -> None:
    assert "newer data" in decide(known(), replica(history=(OLD, MID, NEW))).reason
    assert "cannot tell" in decide(known(), replica(history=(OTHER,))).reason
    assert D.REFUSE_WRONG_WAY.refused
    assert D.REFUSE_CANNOT_TELL.refused
    assert not D.FULL.refused
