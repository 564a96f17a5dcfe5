"""Keeping the side of a split brain that is given up: before a resync
overwrites what changed on one side since the common snapshot, those
entries are copied out, as plain files at the same paths under that side's
``.fsrep/divergent/<time>/`` — the regions the record names (the rest of a
file is a hole; its size, mode, owner and mtime as they were), a file
replaced or moved there whole, directories and symlinks as they are. So
nothing is lost without a copy the operator can read with any tool.

What the record names but the tree no longer holds was removed on that
side: there is nothing to keep.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import tracking

from ._sparse import proc_path

if TYPE_CHECKING:
    from ._tree import Tree

COPY_CHUNK = 1024 * 1024


def keep(tree: Tree, changes: tracking.PathChanges, into: Path) -> tuple[int, int]:
    """Copy what *changes* names of *tree* under *into* (made here); the
    entries and bytes of data copied."""
    into.mkdir(parents=True, mode=0o700)
    entries = data = 0
    for change in changes.walk():
        try:
            st = tree.lstat(change.path)
        except OSError:
            continue
        target = Path(os.fsdecode(os.path.join(os.fsencode(into), change.path))) if change.path else into
        if stat.S_ISDIR(st.st_mode):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(tree.readlink(change.path), target)
            elif stat.S_ISREG(st.st_mode):
                whole = bool(change.flags & tracking.WHOLE) or not change.runs
                data += _copy_file(tree, change.path, target, st.st_size, () if whole else change.runs)
            else:
                continue  # a device or fifo holds no data: its name is in the record
        entries += 1
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(target, stat.S_IMODE(st.st_mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    return entries, data


def _copy_file(tree: Tree, path: bytes, target: Path, size: int, runs: tuple[tracking.RegionRange, ...]) -> int:
    """Copy *runs* of file *path* (all of it for none) to a new sparse file
    *target* of its size; the bytes copied."""
    with tree.entry(path) as entry:
        src = os.open(proc_path(entry), os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(dst, size)
            spans = [(0, size)] if not runs else [(r.first * tracking.REGION_SIZE, r.count * tracking.REGION_SIZE)
                                                  for r in runs]
            copied = 0
            for offset, length in spans:
                end = min(offset + length, size)
                while offset < end:
                    chunk = os.pread(src, min(COPY_CHUNK, end - offset), offset)
                    if not chunk:
                        break
                    os.pwrite(dst, chunk, offset)
                    offset += len(chunk)
                    copied += len(chunk)
            os.fsync(dst)
            return copied
        finally:
            os.close(dst)
    finally:
        os.close(src)
