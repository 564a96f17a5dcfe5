"""The primary's copy aside of a large clone, without FUSE: what changes
of its source it notes, and how it brings the copy up to the source."""

from __future__ import annotations

import os
from pathlib import Path

import tracking
from fsrep._clone_aside import MERGE_AT, SourceWatch, copy_aside
from fsrep._recorder import Recorder

MiB = 1024 * 1024


def test_the_watch_notes_its_inode_only_and_stays_bounded_however_many_writes() -> None:
    watch = SourceWatch(5)
    for i in range(10 * MERGE_AT):
        watch.record(tracking.Marks(regions=((5, b"f", (i % 64) * 4096, 4096), (6, b"g", 0, 1))), i)
    assert len(watch.regions) <= MERGE_AT + 1
    assert max(offset + length for offset, length in watch.regions) == 64 * 4096
    assert all(offset < 64 * 4096 for offset, _ in watch.regions), "another inode's change was noted"


async def test_a_copy_aside_is_brought_up_to_its_source_and_linked(tmp_path: Path) -> None:
    src_path = tmp_path / "src"
    src_path.write_bytes(os.urandom(3 * MiB))
    recorder = Recorder([])
    dir_fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        src = os.open(src_path, os.O_RDONLY)
        ino = os.fstat(src).st_ino
        aside = await copy_aside(src, dir_fd, ino, recorder)
        assert aside is not None
        assert recorder.trackers == [aside.watch]
        _change(src_path)  # a client's changes after the copy, as the recorder hears them
        recorder.record(tracking.Marks(regions=((ino, b"src", MiB, 4096), (ino, b"src", 2 * MiB, MiB))), 1)
        aside.finish(dir_fd, b"copy", 0o100640, os.getuid(), os.getgid())
        aside.close()
    finally:
        os.close(dir_fd)
    assert (tmp_path / "copy").read_bytes() == src_path.read_bytes()
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o640
    assert recorder.trackers == [], "the watch outlived the copy"


def _change(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(MiB)
        f.write(b"late" * 1024)
        f.truncate(2 * MiB + 5)
