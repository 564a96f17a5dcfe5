"""A digest of a whole tree — what a replica must match: per path its type,
mode, owner, size, mtime (to the nanosecond, directories' and symlinks'
too), content hash, symlink target, xattrs and hard-link structure. Used by
``make demo`` and the tests to compare primary store and replica byte for
byte.

The root itself is not digested: a new group's replica root keeps the time
it was made until the first change in it (or a resync) carries the
primary's. ctime cannot be set and atime follows reads: neither is compared."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

import xxhash

from ._sparse import data_segments
from ._tree import Tree

Entry = tuple[object, ...]
_CHUNK = 1024 * 1024


def _content(fd: int) -> str:
    """The digest of a file's bytes, read only where it holds data: a hole
    and a stretch of written zeros digest alike (the bytes are the same),
    and a sparse file of terabytes costs what its data costs."""
    digest = xxhash.xxh3_128()
    try:
        last = -1  # blocks are whole and aligned, so both sides cut the same bytes the same way
        for first, end in data_segments(fd, 0, os.fstat(fd).st_size):
            for block in range(max(first // _CHUNK, last + 1), -(-end // _CHUNK)):
                chunk = os.pread(fd, _CHUNK, block * _CHUNK)
                if chunk.count(0) != len(chunk):
                    digest.update(block.to_bytes(8, "big") + chunk)
                last = block
        digest.update(os.fstat(fd).st_size.to_bytes(8, "big"))
    finally:
        os.close(fd)
    return digest.hexdigest()


def tree_digest(root: str | os.PathLike[str], skip: Iterable[str] = ()) -> dict[str, Entry]:
    """Digest every entry below *root*; ``.fsrep`` at the root is skipped,
    and so are the directories *skip* (relative paths: the roots of other
    consistency groups, when *root* is the default group's). Walks by
    descriptor (``Tree``), so depth and path length are not limited."""
    result: dict[str, Entry] = {}
    first_path: dict[int, str] = {}
    tree = Tree(root, hidden=[os.fsencode(path) for path in skip])
    try:
        for path, st in tree.walk():
            rel = os.fsdecode(path)
            kind = stat.S_IFMT(st.st_mode)
            content: object = None
            if stat.S_ISREG(kind):
                content = _content(tree.open_regular(path, os.O_RDONLY))
            elif stat.S_ISLNK(kind):
                content = os.fsdecode(tree.readlink(path))
            try:
                xattrs = tuple((os.fsdecode(n), tree.getxattr(path, n)) for n in sorted(tree.listxattr(path)))
            except OSError:
                xattrs = ()
            link_of = first_path.setdefault(st.st_ino, rel) if not stat.S_ISDIR(kind) and st.st_nlink > 1 else None
            size = None if stat.S_ISDIR(kind) else st.st_size
            result[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, st.st_mtime_ns, content, xattrs,
                           link_of)
    finally:
        tree.close()
    return result


def tree_differences(a: str | os.PathLike[str], b: str | os.PathLike[str], limit: int = 10,
                     skip: Iterable[str] = ()) -> list[str]:
    """Human-readable differences between two trees (empty when equal);
    *skip* as for ``tree_digest``, in both."""
    da, db = tree_digest(a, skip), tree_digest(b, skip)
    out = [f"only in {a}: {p}" for p in sorted(set(da) - set(db))[:limit]]
    out += [f"only in {b}: {p}" for p in sorted(set(db) - set(da))[:limit]]
    out += [f"differs: {p}: {da[p]} != {db[p]}" for p in sorted(k for k in set(da) & set(db) if da[k] != db[k])[:limit]]
    return out


__all__ = ["tree_digest", "tree_differences"]
