"""What declaring or retiring a consistency group does to the store and to
the replicas.

A declared subtree leaves the replica of the group that held it (usually the
default group) and starts one of its own; a retired group's subtree joins the
group that now holds it. fsrep never guesses either: a group the store knows
but the mount does not declare stops the mount until the operator declares it
again or retires it by name, because forgetting a group discards its
tracking and makes the next declaration a full baseline.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from collections import Counter

import tracking

from ._compare_path import whole_marks
from ._config import ConfigError, GroupRecord, GroupStore
from ._groups import Group, Groups
from ._tree import RESERVED, Tree

log = logging.getLogger(__name__)


def make_root(tree: Tree, path: str) -> list[bytes]:
    """Make group root *path* of the store (*tree*) a directory, creating
    what is missing, never through a symlink; the directories it created.

    Raises:
        ConfigError: a part of the path is a file or a symlink, cannot be
            made, or the root holds ``.fsrep``.
    """
    created: list[bytes] = []
    parts = path.encode().split(b"/")
    for depth in range(1, len(parts) + 1):
        part = b"/".join(parts[:depth])
        try:
            try:
                st = tree.lstat(part)
            except FileNotFoundError:
                parent, name = tree.at(part)
                os.mkdir(name, 0o755, dir_fd=parent)
                created.append(part)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise OSError(errno.ENOTDIR, "a file or a symlink is in the way")
        except OSError as exc:
            raise ConfigError(f"group {path!r}: cannot use {os.fsdecode(part)} in the store as a group directory "
                              f"({exc.strerror}); group paths must be plain directories of the store") from None
    if RESERVED in tree.listdir(path.encode()):
        raise ConfigError(f"group {path!r}: {path}/{RESERVED.decode()} is reserved for fsrep's state at every group "
                          f"root; rename it before declaring the group")
    return created


def check_links(tree: Tree, path: str) -> None:
    """A file belongs to one group: refuse a new group whose subtree holds a
    hard link to a file outside it.

    Raises:
        ConfigError: names the file.
    """
    inside: Counter[int] = Counter()
    links: dict[int, tuple[int, bytes]] = {}
    for entry, st in tree.walk():
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inside[st.st_ino] += 1
            links.setdefault(st.st_ino, (st.st_nlink, entry))
    for ino, (nlink, entry) in links.items():
        if inside[ino] < nlink:
            raise ConfigError(f"group {path!r}: {path}/{os.fsdecode(entry)} has a hard link outside the group, "
                              f"and a file can belong to only one group; remove the other link first")


def _chain(owner: Group, path: bytes) -> list[tuple[int, bytes]]:
    """The owner's directories from its root down to the parent of *path*
    (relative to the owner), shallowest first."""
    parts = path.split(b"/")[:-1]
    dirs = [b""] + [b"/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    return [(owner.tree.lstat(d).st_ino, d) for d in dirs]


def left(owner: Group, path: str) -> None:
    """Subtree *path* (of the mount) left *owner*'s replica: compare the
    directories above it (the resync removes it there, and makes any of
    them that is new)."""
    if owner.rel.dirty.everything:
        return
    owner.rel.mark_dirty(tracking.Marks(dirs=tuple(_chain(owner, owner.relative(path.encode())))),
                         f"group /{path} was declared; its subtree left this group")


def joined(owner: Group, path: str) -> None:
    """Subtree *path* joined *owner*: whatever the replica holds there is
    from before, so all of it is copied, and the directories above it are
    compared."""
    if owner.rel.dirty.everything:
        return
    rel = owner.relative(path.encode())
    try:
        top = owner.tree.lstat(rel)
    except FileNotFoundError:
        top = None
    below = owner.tree.walk(rel) if top is not None and stat.S_ISDIR(top.st_mode) else ()
    subtree = whole_marks([] if top is None else [(rel, top), *below])
    owner.rel.mark_dirty(dataclasses.replace(subtree, dirs=(*_chain(owner, rel), *subtree.dirs)),
                         f"group /{path} was retired; its subtree joined this group")


def retire(groups: GroupStore, records: dict[str, GroupRecord], mount: Groups, retiring: tuple[str, ...]) -> None:
    """Retire the groups the store knows and the mount no longer declares —
    only those named in *retiring*.

    Raises:
        ConfigError: a known group is neither declared nor retired, or a
            group to retire is unknown.
    """
    unknown = [path for path in retiring if path not in records]
    if unknown:
        raise ConfigError(f"--retire {unknown[0]}: this store has no group at /{unknown[0]} to retire "
                          f"(known: {', '.join('/' + p for p in records) or 'none besides the declared'})")
    kept = [path for path in records if path not in retiring]
    if kept:
        record = records[kept[0]]
        raise ConfigError(f"group {record.id} (/{kept[0]}) is known to this store but not declared; declare it "
                          f"again (--group {kept[0]} or the config file), or retire it with --retire {kept[0]} "
                          f"(its subtree joins the group that holds it, copied whole)")
    for path in retiring:
        record = records[path]
        owner, _ = mount.route(path.encode())
        log.warning("group %s (/%s) retired: its subtree joins group %s (/%s); its replica on %s is no longer "
                    "updated", record.id, path, owner.rel.record.id, owner.rel.record.path, record.secondary)
        joined(owner, path)
        groups.remove(record)
