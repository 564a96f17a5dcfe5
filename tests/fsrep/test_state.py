"""The relationship state table: every transition DESIGN.md allows is
allowed, every other is refused, and a refusal names both states.

The allowed transitions are written out here rather than read from
``TRANSITIONS``, so a change to the table has to be a change to this list
too."""

from __future__ import annotations

import itertools

import pytest

from fsrep._state import TRANSITIONS, IllegalTransition, RelationshipState, check_transition

ALLOWED = {
    # a new relationship: a baseline, or straight InSync (empty store, empty replica), or no secondary yet
    ("Uninitialized", "Baseline"), ("Uninitialized", "InSync"), ("Uninitialized", "OutOfSync"),
    ("Baseline", "InSync"), ("Baseline", "OutOfSync"), ("Baseline", "Broken"),
    ("InSync", "OutOfSync"), ("InSync", "Broken"),
    ("OutOfSync", "Resyncing"), ("OutOfSync", "Baseline"), ("OutOfSync", "InSync"), ("OutOfSync", "SplitBrain"),
    ("OutOfSync", "Broken"),
    ("Resyncing", "InSync"), ("Resyncing", "OutOfSync"), ("Resyncing", "Broken"),
    ("Broken", "Baseline"), ("Broken", "Resyncing"),
    ("SplitBrain", "Resyncing"), ("SplitBrain", "Baseline"), ("SplitBrain", "OutOfSync"), ("SplitBrain", "Broken"),
}
STATES = list(RelationshipState)
PAIRS = list(itertools.product(STATES, STATES))


def _name(pair: tuple[RelationshipState, RelationshipState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_the_states_carry_the_names_of_the_design() -> None:
    assert [s.value for s in STATES] == ["Uninitialized", "Baseline", "InSync", "OutOfSync", "Resyncing",
                                         "Broken", "SplitBrain"]


def test_the_table_has_a_row_for_every_state() -> None:
    assert set(TRANSITIONS) == set(STATES)


@pytest.mark.parametrize("pair", [p for p in PAIRS if (p[0].value, p[1].value) in ALLOWED], ids=_name)
def test_an_allowed_transition_is_allowed(pair: tuple[RelationshipState, RelationshipState]) -> None:
    check_transition(*pair)


@pytest.mark.parametrize("pair", [p for p in PAIRS if (p[0].value, p[1].value) not in ALLOWED and p[0] is not p[1]],
                         ids=_name)
def test_any_other_transition_is_refused_and_named(pair: tuple[RelationshipState, RelationshipState]) -> None:
    old, new = pair
    with pytest.raises(IllegalTransition, match=f"^{old.value} -> {new.value} is not a legal transition$"):
        check_transition(old, new)


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.value)
def test_staying_in_a_state_is_no_transition(state: RelationshipState) -> None:
    check_transition(state, state)


def test_every_state_is_reachable_from_a_new_relationship_and_can_get_back_in_sync() -> None:
    def reachable(start: RelationshipState) -> set[RelationshipState]:
        seen, todo = {start}, [start]
        while todo:
            for new in TRANSITIONS[todo.pop()] - seen:
                seen.add(new)
                todo.append(new)
        return seen

    assert reachable(RelationshipState.UNINITIALIZED) == set(STATES)
    assert [s for s in STATES if RelationshipState.IN_SYNC not in reachable(s)] == []
