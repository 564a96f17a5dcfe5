"""Copying an entry of the primary's store to the replica, as both resyncs
do it (quick, in ``_resync``, and full, in ``_fullsync``): the frames that
make the entry from its ``lstat``, give it its attributes and extended
attributes, and how many bytes of copied data may wait for acks.

Each function returns frame builders — a frame given its sequence number,
what ``ResyncStream.send`` takes — built from what the store holds when it
is called, so a caller that sends them in the same step sends one moment's
state.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import transport as tp

from ._tree import Tree

MAX_IN_FLIGHT = 32 * 1024 * 1024  # bytes of copied data a resync lets wait for acks before it pauses

Build = Callable[[int], tp.Operation]


def creation(tree: Tree, path: bytes, st: os.stat_result) -> Build:
    """The frame that makes entry *path* on the replica of the kind, mode
    and owner *st* says (a file empty, no times): MkDir, Create, Symlink
    (its target read now) or MkNod."""
    mode, uid, gid = st.st_mode, st.st_uid, st.st_gid
    if stat.S_ISDIR(mode):
        return lambda seq: tp.MkDir(seq=seq, path=path, mode=stat.S_IMODE(mode), uid=uid, gid=gid)
    if stat.S_ISREG(mode):
        return lambda seq: tp.Create(seq=seq, path=path, mode=stat.S_IMODE(mode), uid=uid, gid=gid)
    if stat.S_ISLNK(mode):
        target = tree.readlink(path)
        return lambda seq: tp.Symlink(seq=seq, path=path, target=target, uid=uid, gid=gid)
    return lambda seq: tp.MkNod(seq=seq, path=path, mode=mode, rdev=st.st_rdev, uid=uid, gid=gid)


def attributes(path: bytes, st: os.stat_result, fields: int) -> Build:
    """A SetAttr giving *path* the attributes of *st* that *fields*
    (``tp.ATTR_*`` bits) names."""
    return lambda seq: tp.SetAttr(seq=seq, path=path, fields=fields, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                                  gid=st.st_gid, size=st.st_size, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns)


def xattrs(tree: Tree, path: bytes, *, drop_others: bool) -> list[Build]:
    """The frames that give *path* on the replica the extended attributes
    it has here: a SetXattr for each one that can be read now and, with
    *drop_others*, a KeepXattrs that removes the replica's others (one
    listed here but unreadable is left there as it is). None at all when
    they cannot be listed (the entry went, or its filesystem has none):
    the replica's stay as they are."""
    try:
        names = tree.listxattr(path)
    except OSError:
        return []
    frames: list[Build] = []
    for name in names:
        try:
            value = tree.getxattr(path, name)
        except OSError:
            continue
        frames.append(lambda seq, name=name, value=value: tp.SetXattr(seq=seq, path=path, name=name, value=value))
    if drop_others:
        frames.append(lambda seq: tp.KeepXattrs(seq=seq, path=path, names=b"\0".join(names)))
    return frames
