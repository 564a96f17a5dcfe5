"""DirStream on a plain directory: every entry once, from any offset it
gave, with a caller that stops anywhere and a directory that changes."""

from __future__ import annotations

import errno
import itertools
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from fsrep._dirstream import DirStream
from tests.conftest import empty_files

ENTRIES = 1500  # several getdents64 batches


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[DirStream]:
    empty_files(tmp_path, ENTRIES)
    opened = DirStream(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    try:
        yield opened
    finally:
        opened.close()


def test_lists_every_entry_once_with_dot_and_dotdot(stream: DirStream, tmp_path: Path) -> None:
    names = [name for name, _ in stream.entries(0)]
    assert len(names) == len(set(names)) == ENTRIES + 2
    assert set(names) == {os.fsencode(n) for n in os.listdir(tmp_path)} | {b".", b".."}


def test_a_caller_that_stops_goes_on_at_the_entry_it_stopped_at(stream: DirStream) -> None:
    whole = list(stream.entries(0))
    got: list[tuple[bytes, int]] = []
    offset = 0
    for round_ in range(len(whole) + 1):  # bounded: each round but the last takes an entry
        taken = 0
        for entry in stream.entries(offset):
            if taken == 1 + round_ % 40:  # a full reply: this entry is not taken
                break
            got.append(entry)
            taken += 1
        if not taken:
            break
        offset = got[-1][1]  # as the kernel does: on from the offset of the last entry it took
    assert got == whole


def test_goes_on_from_any_offset_it_gave(stream: DirStream) -> None:
    whole = list(stream.entries(0))
    for cut in (1, 2, len(whole) // 3, len(whole) // 2, len(whole) - 1):
        assert list(stream.entries(whole[cut - 1][1])) == whole[cut:]


def test_offset_zero_rewinds(stream: DirStream) -> None:
    whole = list(stream.entries(0))
    assert len(list(itertools.islice(stream.entries(0), len(whole) // 2))) == len(whole) // 2
    assert list(stream.entries(0)) == whole


def test_entries_not_changed_while_listing_show_exactly_once(tmp_path: Path) -> None:
    initial = empty_files(tmp_path, ENTRIES)
    removed: set[bytes] = set()
    added: set[bytes] = set()
    seen: Counter[bytes] = Counter()
    opened = DirStream(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY))
    try:
        for count, (name, _) in enumerate(opened.entries(0), 1):
            assert count <= 2 * ENTRIES, "the listing does not end"
            seen[name] += 1
            if count % 500 == 0:
                victims = sorted(initial - removed)[count % 7::9][:100]  # some already listed, some not
                for victim in victims:
                    os.unlink(tmp_path / os.fsdecode(victim))
                removed.update(victims)
                added |= empty_files(tmp_path, 100, prefix=f"new{count}")
    finally:
        opened.close()
    seen -= Counter({b".": 1, b"..": 1})
    assert [name for name, times in seen.items() if times > 1] == []
    assert initial - removed <= set(seen), "an entry that stayed was lost"
    assert set(seen) <= initial | added


def test_a_removed_directory_fails_with_enoent(tmp_path: Path) -> None:
    (tmp_path / "gone").mkdir()
    opened = DirStream(os.open(tmp_path / "gone", os.O_RDONLY | os.O_DIRECTORY))
    try:
        (tmp_path / "gone").rmdir()
        with pytest.raises(OSError) as caught:
            list(opened.entries(0))
        assert caught.value.errno == errno.ENOENT
    finally:
        opened.close()
