"""Durable state: atomic, versioned, checksummed; damage is a named error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracking import StateCorrupt, StateMissing, atomic_write, load_state, save_state


def test_round_trip(tmp_path: Path) -> None:
    save_state(tmp_path / "s.json", "kind", {"a": [1, 2], "b": "x"})
    assert load_state(tmp_path / "s.json", "kind") == {"a": [1, 2], "b": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_missing_file_is_missing_not_empty(tmp_path: Path) -> None:
    with pytest.raises(StateMissing):
        load_state(tmp_path / "nope.json", "kind")


@pytest.mark.parametrize("damage", [
    lambda doc: b"",
    lambda doc: doc[: len(doc) // 2],
    lambda doc: b"\xff\xfe garbage",
    lambda doc: doc.replace(b'"kind"', b'"other"'),
    lambda doc: doc.replace(b'"version": 1', b'"version": 99'),
    lambda doc: doc.replace(b'"x"', b'"y"'),
])
def test_damaged_files_are_corrupt_and_name_the_file(tmp_path: Path, damage) -> None:
    path = tmp_path / "s.json"
    save_state(path, "kind", {"b": "x"})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StateCorrupt, match="s.json"):
        load_state(path, "kind")


def test_atomic_write_replaces_whole_contents(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"old contents that are longer")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
