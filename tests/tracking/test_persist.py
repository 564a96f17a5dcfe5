"""Durable state: atomic, versioned, checksummed; damage is a named error."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tracking import JournaledState, StateCorrupt, StateError, StateMissing, atomic_write, load_state, save_state
from tracking._persist import STATE_VERSION

PAYLOAD = {"a": [1, 2], "b": "x", "nested": {"z": None, "y": 1.5}, "text": "é"}


def test_saved_state_loads_back_equal(tmp_path: Path) -> None:
    save_state(tmp_path / "s.json", "kind", PAYLOAD)
    assert load_state(tmp_path / "s.json", "kind") == PAYLOAD


def test_saving_again_replaces_the_state(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    save_state(path, "kind", {"n": 1})
    save_state(path, "kind", {"n": 2})
    assert load_state(path, "kind") == {"n": 2}


def test_saved_state_is_readable_json_with_format_version_and_checksum(tmp_path: Path) -> None:
    save_state(tmp_path / "s.json", "kind", PAYLOAD)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["format"] == "kind"
    assert doc["version"] == STATE_VERSION
    assert doc["payload"] == PAYLOAD
    assert isinstance(doc["checksum"], str)
    assert doc["checksum"]


def test_missing_file_is_missing_not_empty(tmp_path: Path) -> None:
    with pytest.raises(StateMissing, match="nope.json"):
        load_state(tmp_path / "nope.json", "kind")


def test_missing_and_corrupt_share_one_base() -> None:
    assert issubclass(StateMissing, StateError)
    assert issubclass(StateCorrupt, StateError)
    assert not issubclass(StateCorrupt, StateMissing)


@pytest.mark.parametrize(("damage", "match"), [
    pytest.param(lambda doc: b"", "JSON", id="empty"),
    pytest.param(lambda doc: doc[: len(doc) // 2], "JSON", id="truncated"),
    pytest.param(lambda doc: doc[:-3], "JSON", id="last-bytes-lost"),
    pytest.param(lambda doc: b"\xff\xfe garbage", "JSON", id="garbage"),
    pytest.param(lambda doc: b"\0" * 4096, "JSON", id="zeroed-block"),
    pytest.param(lambda doc: b"[" * 100_000, "JSON", id="deeply-nested"),
    pytest.param(lambda doc: b"[1, 2]", "not a kind state file", id="json-list"),
    pytest.param(lambda doc: b"null", "not a kind state file", id="json-null"),
    pytest.param(lambda doc: doc.replace(b'"kind"', b'"other"'), "not a kind state file", id="wrong-format"),
    pytest.param(lambda doc: doc.replace(b'"version": 1', b'"version": 99'), "version 99", id="future-version"),
    pytest.param(lambda doc: _without(doc, "version"), "version None", id="no-version"),
    pytest.param(lambda doc: doc.replace(b'"x"', b'"y"'), "checksum", id="tampered-payload"),
    pytest.param(lambda doc: doc.replace(b'"n": 1', b'"n": 2'), "checksum", id="tampered-number"),
    pytest.param(lambda doc: doc.replace(b'"checksum": "', b'"checksum": "0'), "checksum", id="tampered-checksum"),
    pytest.param(lambda doc: _without(doc, "checksum"), "checksum", id="no-checksum"),
    pytest.param(lambda doc: _without(doc, "payload"), "checksum", id="no-payload"),
])
def test_damaged_file_is_corrupt_and_the_error_names_the_file(tmp_path: Path, damage, match: str) -> None:
    path = tmp_path / "state-file.json"
    save_state(path, "kind", {"b": "x", "n": 1})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(StateCorrupt, match=match) as caught:
        load_state(path, "kind")
    assert str(path) in str(caught.value)


def _without(doc: bytes, key: str) -> bytes:
    data = json.loads(doc)
    del data[key]
    return json.dumps(data).encode()


def test_unreadable_path_is_corrupt_and_named(tmp_path: Path) -> None:
    path = tmp_path / "a-directory.json"
    path.mkdir()
    with pytest.raises(StateCorrupt, match="a-directory.json"):
        load_state(path, "kind")


def test_atomic_write_replaces_whole_contents_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"old contents that are longer")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_save_state_leaves_no_temp_file(tmp_path: Path) -> None:
    save_state(tmp_path / "s.json", "kind", PAYLOAD)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_atomic_write_overwrites_a_stale_temp_file_from_a_crash(tmp_path: Path) -> None:
    (tmp_path / ".f.tmp").write_bytes(b"half-written by a process that died" * 100)
    atomic_write(tmp_path / "f", b"whole")
    assert (tmp_path / "f").read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_write_of_a_large_buffer_writes_all_of_it(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    atomic_write(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_atomic_write_creates_a_private_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "f", b"secret")
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) & 0o077 == 0


def test_atomic_write_into_a_missing_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no-such-dir" / "f", b"x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_accepts_str_paths(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "f"), b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_alternating_state_survives_a_torn_save_and_continues_its_generations(tmp_path: Path) -> None:
    from tracking import AlternatingState
    state = AlternatingState(tmp_path / "log", "kind")
    state.save({"n": 1})
    state.save({"n": 2})
    assert AlternatingState(tmp_path / "log", "kind").load() == {"n": 2}
    newest = state.paths[state.generation % 2]
    newest.write_bytes(newest.read_bytes()[:10])  # a crash in the middle of the last save
    again = AlternatingState(tmp_path / "log", "kind")
    assert again.load() == {"n": 1}
    again.save({"n": 3})
    assert AlternatingState(tmp_path / "log", "kind").load() == {"n": 3}
    with pytest.raises(StateMissing):
        AlternatingState(tmp_path / "other", "kind").load()


# --- a base and its journal ---------------------------------------------------------


def test_a_journaled_state_loads_its_base_and_the_records_after_it(tmp_path: Path) -> None:
    state = JournaledState(tmp_path / "s", "kind")
    state.rewrite({"n": 1})
    state.append({"add": 2})
    state.append({"add": 3})
    again = JournaledState(tmp_path / "s", "kind")
    assert again.load() == ({"n": 1}, [{"add": 2}, {"add": 3}])
    again.append({"add": 4})  # a loaded state goes on appending where it was
    assert JournaledState(tmp_path / "s", "kind").load()[1] == [{"add": 2}, {"add": 3}, {"add": 4}]
    again.rewrite({"n": 9})
    assert JournaledState(tmp_path / "s", "kind").load() == ({"n": 9}, [])


def test_a_torn_append_ends_the_journal_and_is_cut_off_before_the_next(tmp_path: Path) -> None:
    state = JournaledState(tmp_path / "s", "kind")
    state.rewrite({"n": 1})
    state.append({"add": 2})
    with open(state.journal, "ab") as f:
        f.write(b'{"checksum": "12", "epoch": "x", "rec')  # a crash in the middle of an append
    again = JournaledState(tmp_path / "s", "kind")
    assert again.load() == ({"n": 1}, [{"add": 2}])
    again.append({"add": 3})
    assert JournaledState(tmp_path / "s", "kind").load()[1] == [{"add": 2}, {"add": 3}]


def test_records_of_an_older_base_are_skipped(tmp_path: Path) -> None:
    state = JournaledState(tmp_path / "s", "kind")
    state.rewrite({"n": 1})
    state.append({"add": 2})
    old_journal = state.journal.read_bytes()
    state.rewrite({"n": 3})
    state.journal.write_bytes(old_journal)  # a crash after the new base, before the journal was emptied
    assert JournaledState(tmp_path / "s", "kind").load() == ({"n": 3}, [])


def test_a_damaged_base_is_an_error_with_a_name(tmp_path: Path) -> None:
    state = JournaledState(tmp_path / "s", "kind")
    with pytest.raises(StateMissing):
        state.load()
    state.rewrite({"n": 1})
    state.path.write_bytes(state.path.read_bytes()[:-10])
    with pytest.raises(StateCorrupt):
        JournaledState(tmp_path / "s", "kind").load()
    with pytest.raises(StateError, match="no base to append to"):
        JournaledState(tmp_path / "t", "kind").append({})


def test_a_damaged_record_before_others_is_corruption_not_a_torn_append(tmp_path: Path) -> None:
    state = JournaledState(tmp_path / "s", "kind")
    state.rewrite({"n": 1})
    for n in range(3):
        state.append({"add": n})
    lines = state.journal.read_bytes().splitlines(keepends=True)
    state.journal.write_bytes(lines[0] + lines[1].replace(b"add", b"adz") + lines[2])  # bit rot in the middle
    with pytest.raises(StateCorrupt, match="record 2 is damaged"):
        JournaledState(tmp_path / "s", "kind").load()
