"""Relationship states, with DESIGN.md's names, and the one table of the
transitions between them."""

from __future__ import annotations

import enum


class RelationshipState(enum.Enum):
    UNINITIALIZED = "Uninitialized"
    BASELINE = "Baseline"
    IN_SYNC = "InSync"
    OUT_OF_SYNC = "OutOfSync"
    RESYNCING = "Resyncing"
    BROKEN = "Broken"
    SPLIT_BRAIN = "SplitBrain"


R = RelationshipState

TRANSITIONS: dict[RelationshipState, frozenset[RelationshipState]] = {
    R.UNINITIALIZED: frozenset({R.BASELINE, R.IN_SYNC, R.OUT_OF_SYNC}),
    R.BASELINE: frozenset({R.IN_SYNC, R.OUT_OF_SYNC, R.BROKEN}),
    R.IN_SYNC: frozenset({R.OUT_OF_SYNC, R.BROKEN}),
    R.OUT_OF_SYNC: frozenset({R.RESYNCING, R.BASELINE, R.IN_SYNC, R.SPLIT_BRAIN, R.BROKEN}),
    R.RESYNCING: frozenset({R.IN_SYNC, R.OUT_OF_SYNC, R.BROKEN}),
    R.BROKEN: frozenset({R.BASELINE, R.RESYNCING}),
    R.SPLIT_BRAIN: frozenset({R.RESYNCING, R.BASELINE, R.OUT_OF_SYNC, R.BROKEN}),
}


class IllegalTransition(Exception):
    """Raised when code asks for a state change the table does not allow
    (a bug in fsrep, never an operator's or a peer's fault)."""


def check_transition(old: RelationshipState, new: RelationshipState) -> None:
    """Raise IllegalTransition unless *old* -> *new* is in the table (a
    change to the same state is always allowed and means nothing)."""
    if old is not new and new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.value} -> {new.value} is not a legal transition")
