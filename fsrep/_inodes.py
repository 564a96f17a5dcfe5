"""Inode bookkeeping for the FUSE layer: which backing inode a FUSE inode
number is, where it lives in the tree, how often the kernel looked it up and
how many handles are open on it.

How this works: a FUSE inode number is the backing file's ``st_ino``, except
that the store root is always 1 (and a backing inode 1, if the filesystem has
one, takes the root's number), so numbers are stable for the life of the
mount without a mapping table. Only an inode of another file system (a group
moved to another disk, ``_move_across``) or one whose number a moved file
kept (``rehome``) gets a number from a table: numbers from FOREIGN up, for as
long as the kernel knows the inode. Each known inode keeps the set of
``(parent, name)`` links the kernel has seen it under, so hard links and
renamed parents resolve to a current path by walking up to the root. An
inode is dropped when the kernel has forgotten every lookup and no handle is
open — never earlier (pyfuse3's rule: ``forget`` only decrements).

Caveats:
- A file unlinked while open keeps its node with no links; ``path()``
  returns None and the FUSE layer serves it from its open descriptor.
- Only links the kernel looked up are known. A file reached through one
  hard link does not know its other names until they are looked up.
- ``epoch`` moves on with every change that can give any inode another
  path (a link added or removed, a node made or dropped), never otherwise:
  a path worked out at one epoch holds as long as the epoch stays.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field

ROOT = 1
FOREIGN = 1 << 62  # the first number given to an inode of another file system: above any ext4/xfs/tmpfs st_ino
MAX_DEPTH = 32 * 1024  # directories above an entry: a path of MAX_PATH bytes has at most half as many

Link = tuple[int, bytes]


@dataclass(slots=True)
class Node:
    ino: int
    links: set[Link] = field(default_factory=set)
    lookups: int = 0
    opens: int = 0


class InodeTable:
    """Inode number <-> path bookkeeping. Pure data; no system calls."""

    def __init__(self, root_st_ino: int, device: int = 0) -> None:
        self._root_st_ino = root_st_ino
        self._device = device  # the store's: its inodes keep their own numbers
        self._numbers: dict[tuple[int, int], int] = {}  # (device, st_ino) -> number, for the inodes given one
        self._backing: dict[int, tuple[int, int]] = {}  # the inverse
        self._next = FOREIGN
        self._moved: dict[int, tuple[int, Mapping[int, int]]] = {}  # see ``moving``
        self._nodes: dict[int, Node] = {ROOT: Node(ROOT, lookups=1)}
        self._entries: dict[Link, int] = {}
        self.epoch = 0  # moves on whenever a path may change (see Caveats)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, ino: int) -> bool:
        return ino in self._nodes

    def fuse_ino(self, st_ino: int, device: int | None = None) -> int:
        """The FUSE inode number for backing inode *st_ino* of *device*
        (None: the store's)."""
        key = self._key(st_ino, device)
        number = self._numbers.get(key)
        if number is not None:
            return number
        if key[0] == self._device:
            number = self._own(key[1])
            if number not in self._backing:  # not kept by a moved file
                return number
        if len(self._numbers) > 2 * len(self._nodes) + 1024:  # numbers given to entries never looked up
            self._sweep()
        number, self._next = self._next, self._next + 1
        self._numbers[key], self._backing[number] = number, key
        return number

    def known(self, st_ino: int, device: int | None = None) -> int | None:
        """The FUSE inode number of backing inode *st_ino* of *device*
        when the kernel knows it (None otherwise; no number is given)."""
        key = self._key(st_ino, device)
        number = self._numbers.get(key)
        if number is None and key[0] == self._device and self._own(key[1]) not in self._backing:
            number = self._own(key[1])
        return number if number is not None and number in self._nodes else None

    def _own(self, st_ino: int) -> int:
        """The number a store inode has by itself (the root's swap is its own inverse)."""
        if st_ino == self._root_st_ino:
            return ROOT
        if st_ino == ROOT:
            return self._root_st_ino
        return st_ino

    def backing(self, ino: int) -> int:
        """The backing ``st_ino`` of FUSE inode *ino* (on its group's device)."""
        key = self._backing.get(ino)
        return key[1] if key is not None else self._own(ino)

    def rehome(self, ino: int, device: int, st_ino: int) -> None:
        """Known inode *ino* is now backing inode *st_ino* of *device* (its
        data was copied there): the kernel keeps its number, and a store
        inode that later gets the old ``st_ino`` gets another."""
        old = self._backing.pop(ino, None)
        if old is not None:
            self._numbers.pop(old, None)
        self._numbers[(device, st_ino)], self._backing[ino] = ino, (device, st_ino)
        self.epoch += 1  # the locations worked out before name the old backing inodes

    def moving(self, old: int, new: int, inodes: Mapping[int, int]) -> None:
        """Inodes of device *old* were copied to device *new* (*inodes*:
        old st_ino -> new): a request that still meets one of the old
        inodes (it was under way at the cutover) is answered for its copy.
        Until ``moved(old)``."""
        self._moved[old] = (new, inodes)

    def moved(self, old: int) -> None:
        """No request meets the inodes of device *old* any more (see ``moving``)."""
        self._moved.pop(old, None)

    def _key(self, st_ino: int, device: int | None) -> tuple[int, int]:
        """(device, st_ino) of a backing inode — of its copy, while a move
        translates its device (see ``moving``)."""
        device = self._device if device is None else device
        moved = self._moved.get(device)
        if moved is not None and (copy := moved[1].get(st_ino)) is not None:
            return moved[0], copy
        return device, st_ino

    def _sweep(self) -> None:
        for number in [n for n in self._backing if n not in self._nodes]:
            self._numbers.pop(self._backing.pop(number), None)

    def numbers(self) -> list[int]:
        """Every inode number the kernel knows now."""
        return list(self._nodes)

    def node(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, f"inode {ino} is not known") from None

    # --- paths -----------------------------------------------------------------

    def path(self, ino: int) -> bytes | None:
        """The current group-relative path of *ino* (b"" for the root), or
        None when it has no link left (unlinked while open).

        Raises:
            OSError(ESTALE): the inode is not known.
        """
        found = self.chain(ino)
        return None if found is None else found[0]

    def chain(self, ino: int) -> tuple[bytes, list[int]] | None:
        """(path, directories from the root down to the parent) of *ino*,
        or None when it has no link left. Iterative: trees can be deeper
        than Python's recursion limit.

        Raises:
            OSError(ESTALE): the inode is not known.
        """
        if ino == ROOT:
            return b"", []
        node = self.node(ino)
        for link in sorted(node.links):
            names = [link[1]]
            dirs: list[int] = []
            parent = link[0]
            while parent != ROOT:
                up = self._nodes.get(parent)
                if up is None or not up.links or len(dirs) > MAX_DEPTH:
                    break
                dirs.append(parent)
                parent, name = min(up.links)
                names.append(name)
            else:
                dirs.append(ROOT)
                return b"/".join(reversed(names)), dirs[::-1]
        return None

    def child_path(self, parent: int, name: bytes) -> bytes:
        """Path of entry *name* in directory *parent*."""
        base = self.path(parent)
        if base is None:
            raise OSError(errno.ENOENT, "directory was removed")
        return base + b"/" + name if base else name

    def lookup_entry(self, parent: int, name: bytes) -> int | None:
        """The inode last seen at (*parent*, *name*), if any."""
        return self._entries.get((parent, name))

    # --- the kernel's references -------------------------------------------

    def remember(self, st_ino: int, parent: int, name: bytes, device: int | None = None) -> int:
        """Record one kernel lookup of *name* in *parent* (backing inode
        *st_ino* of *device*, None: the store's); returns the FUSE inode
        number."""
        ino = self.fuse_ino(st_ino, device)
        old = self._entries.get((parent, name))
        if old is not None and old != ino:
            self._unlink_entry(parent, name)
        node = self._nodes.get(ino)
        if node is None:
            node = self._nodes[ino] = Node(ino)
        node.lookups += 1
        if ino != ROOT:
            if (parent, name) not in node.links:
                node.links.add((parent, name))
                self.epoch += 1
            self._entries[(parent, name)] = ino
        return ino

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    def opened(self, ino: int) -> None:
        self.node(ino).opens += 1

    def closed(self, ino: int) -> None:
        node = self._nodes.get(ino)
        if node is None:
            return
        node.opens = max(0, node.opens - 1)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.lookups == 0 and node.opens == 0 and node.ino != ROOT:
            for link in node.links:
                if self._entries.get(link) == node.ino:
                    del self._entries[link]
            del self._nodes[node.ino]
            key = self._backing.pop(node.ino, None)
            if key is not None:
                self._numbers.pop(key, None)
            self.epoch += 1

    # --- namespace changes ---------------------------------------------------

    def _unlink_entry(self, parent: int, name: bytes) -> None:
        ino = self._entries.pop((parent, name), None)
        if ino is not None and ino in self._nodes:
            self._nodes[ino].links.discard((parent, name))
            self.epoch += 1

    def unlinked(self, parent: int, name: bytes) -> None:
        """*name* was removed from *parent* (unlink or rmdir)."""
        self._unlink_entry(parent, name)

    def renamed(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes) -> None:
        """A plain rename: whatever was at the target is replaced."""
        ino = self._entries.get((old_parent, old_name))
        self._unlink_entry(new_parent, new_name)
        self._unlink_entry(old_parent, old_name)
        if ino is not None and ino in self._nodes:
            self._nodes[ino].links.add((new_parent, new_name))
            self._entries[(new_parent, new_name)] = ino
            self.epoch += 1

    def exchanged(self, a_parent: int, a_name: bytes, b_parent: int, b_name: bytes) -> None:
        """RENAME_EXCHANGE: the two entries swap inodes."""
        a = self._entries.get((a_parent, a_name))
        b = self._entries.get((b_parent, b_name))
        self._unlink_entry(a_parent, a_name)
        self._unlink_entry(b_parent, b_name)
        for ino, link in ((a, (b_parent, b_name)), (b, (a_parent, a_name))):
            if ino is not None and ino in self._nodes:
                self._nodes[ino].links.add(link)
                self._entries[link] = ino
                self.epoch += 1
