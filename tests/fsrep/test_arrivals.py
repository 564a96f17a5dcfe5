"""The receiving end of a move to another primary, without a mount: the
group's state an Adopt carries is checked field by field (a malformed one
is a refusal, never a traceback), and an arrival a crash cut short after
its record was written is finished at the next mount."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsrep._arrivals import Refused, parse_state, settle
from fsrep._config import GroupRecord

STATE = {"path": "vms/vm1", "policy": "sync", "secondary": "127.0.0.1:7700", "last_seq": 42,
         "generations": ["ab" * 16], "snapshot": {"name": "move-20261204T000000Z", "generation": "ab" * 16,
                                                  "seq": 41, "created": 1.5}}


def test_a_well_formed_state_is_read() -> None:
    state = parse_state(json.dumps(STATE).encode())
    assert (state["path"], state["policy"], state["last_seq"]) == ("vms/vm1", "sync", 42)
    assert (state["snapshot"].name, state["snapshot"].seq, state["snapshot"].auto) == ("move-20261204T000000Z", 41,
                                                                                      False)


@pytest.mark.parametrize("change", [
    {"path": "/etc"}, {"path": "a/../b"}, {"path": ""}, {"path": 7}, {"policy": "eager"}, {"secondary": "nowhere"},
    {"last_seq": -1}, {"last_seq": "1"}, {"generations": []}, {"generations": ["zz"]},
    {"snapshot": {"name": "../x", "generation": "ab", "seq": 1, "created": 0}}, {"snapshot": None},
])
def test_a_malformed_state_is_refused_in_one_line(change: dict) -> None:
    with pytest.raises(Refused, match="malformed"):
        parse_state(json.dumps({**STATE, **change}).encode())


@pytest.mark.parametrize("blob", [b"", b"[]", b"{", b"\xff" * 10])
def test_what_is_not_json_is_refused(blob: bytes) -> None:
    with pytest.raises(Refused, match="malformed"):
        parse_state(blob)


def test_an_arrival_cut_short_after_its_record_is_finished(tmp_path: Path) -> None:
    store = tmp_path / "store"
    copy = store / ".fsrep" / "incoming" / "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    copy.mkdir(parents=True)
    (copy / "disk.img").write_bytes(b"data")
    (store / "vms").mkdir()
    record = GroupRecord(id=copy.name, path="vms/vm1", policy="sync", secondary="127.0.0.1:7700",
                         moving_phase="arriving", moving_from=str(copy), arrived_from="10.0.0.1:40000")
    assert settle(store, record)
    assert (store / "vms" / "vm1" / "disk.img").read_bytes() == b"data"
    assert not copy.exists()
    assert (record.moving_phase, record.moving_from) == ("", "")
    record.moving_phase, record.moving_from = "arriving", str(copy)  # the rename was made before the crash
    assert settle(store, record)
    assert (store / "vms" / "vm1" / "disk.img").read_bytes() == b"data"
    assert not settle(store, record)  # nothing to finish
