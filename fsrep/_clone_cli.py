"""``fsrep clone SRC DST``: a copy of a file inside a mount that each side
makes from its own copy of the source (a reflink where the store's file
system can), replicated as one operation: no file data crosses the link.
A directory (a VM's folder) is copied entry by entry through the mount:
its directories and symlinks made as any client makes them, each file
cloned so. A file whose copy lands in another group is copied as data
through the mount, as cp would: that group's replica may be elsewhere."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from ._commands import Cloned, CloneRequest
from ._control import ControlError, call, daemon_for
from ._mounts import enclosing_mount
from ._sparse import clone_data

CLONE_TIMEOUT = 600.0  # a copy without reflinks is a copy of the file's data on each side


def add_parser(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("clone", help="copy a file or a directory inside a mount by clones: no file data sent",
                       formatter_class=fmt,
                       epilog="examples:\n  fsrep clone /mnt/vms/base.img /mnt/vms/vm7.img\n"
                              "  fsrep clone /mnt/vms/base /mnt/vms/vm8\n\n"
                              "both paths are in one fsrep mount and one consistency group; DST must not\n"
                              "exist. A directory is copied entry by entry, each file cloned. Each side\n"
                              "copies its own source: a reflink (instant, extents shared) where the store's\n"
                              "file system has them, else a copy of the data (holes kept). While the group\n"
                              "is not InSync the copy is made here and recorded: the resync clones it on the\n"
                              "secondary too, then compares it by digest and sends only what differs.\n"
                              "A file cloned into another consistency group is copied as data instead (that\n"
                              "group's replica may be on another host): its bytes cross that group's link.")
    p.add_argument("src", metavar="SRC", help="a regular file or a directory in an fsrep mount")
    p.add_argument("dst", metavar="DST", help="the new path, in the same mount")


def cmd_clone(args: argparse.Namespace) -> int:
    src, dst = Path(os.path.abspath(args.src)), Path(os.path.abspath(args.dst))
    mount = enclosing_mount(src.parent.resolve() / src.name)
    if mount is None:
        raise ControlError(f"{args.src} is not in an fsrep mount (see 'mount -t fuse.fsrep')")
    parent = dst.parent.resolve()
    if enclosing_mount(parent) != mount:
        raise ControlError(f"{args.dst} is not in the mount of {args.src} ({mount.mountpoint}): a clone stays in one "
                           f"mount; copy it with cp instead")
    try:
        st = os.stat(src, follow_symlinks=False)  # through the mount: the kernel looks it up, its number is known
        into = os.stat(parent)
    except OSError as exc:
        raise ControlError(f"cannot clone {args.src}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"{args.src} is neither a regular file nor a directory: fsrep clone copies those")
    if os.path.lexists(parent / dst.name):
        raise ControlError(f"{args.dst} exists: give a new name")
    if stat.S_ISDIR(st.st_mode) and (parent / dst.name == src or src in (parent / dst.name).parents):
        raise ControlError(f"{args.dst} is inside {args.src}: a directory is not cloned into itself")
    meta, _ = daemon_for(mount.mountpoint)
    if stat.S_ISREG(st.st_mode):
        tally = _Tally()
        try:
            done = _clone_or_copy(meta, src, parent / dst.name, st, into.st_ino, tally)
        except OSError as exc:
            raise ControlError(f"cannot copy {args.src} to {args.dst}: {exc.strerror}") from None
        if done.other_group:
            print(f"{args.dst} is in group {done.other_group}, {args.src} in group {done.group}: copied as data "
                  f"({tally.copied_bytes} bytes cross the link of group {done.other_group})")
            return 0
        how = "replicated as one operation" if done.replicated else \
            "recorded for the resync, which clones it on the secondary (the group is not InSync)"
        print(f"group {done.group}: cloned {args.src} to {args.dst} ({done.bytes} bytes; {how})")
        return 0
    tally = _Tally()
    try:
        _clone_tree(meta, src, parent / dst.name, st, tally)
    except OSError as exc:
        raise ControlError(f"cannot clone {exc.filename or args.src}: {exc.strerror}; what was made so far stays "
                           f"in {args.dst}") from None
    kept = f"; {tally.kept} recorded for the resync (the group is not InSync)" if tally.kept else ""
    copied = f"; {tally.copied} files in another group copied as data ({tally.copied_bytes} bytes sent)" \
        if tally.copied else ""
    print(f"cloned {args.src} to {args.dst}: {tally.files} files ({tally.bytes} bytes, no data sent), "
          f"{tally.dirs} directories, {tally.others} other entries{kept}{copied}")
    return 0


class _Tally:
    def __init__(self) -> None:
        self.files = self.bytes = self.dirs = self.others = self.kept = self.copied = self.copied_bytes = 0


def _clone_or_copy(meta: Path, src: Path, dst: Path, st: os.stat_result, into: int, tally: _Tally) -> Cloned:
    """File *src* cloned as *dst*; when *dst* is in another group, copied
    as data through the mount (each write replicated in that group)."""
    done = _clone_file(meta, st.st_ino, into, dst.name)
    if not done.other_group:
        tally.files += 1
        tally.bytes += done.bytes
        tally.kept += not done.replicated
        return done
    try:
        with open(src, "rb") as source, open(dst, "xb") as copy:
            clone_data(source.fileno(), copy.fileno())
            tally.copied_bytes += os.fstat(copy.fileno()).st_size
        _own(dst, st)
    except BaseException:
        dst.unlink(missing_ok=True)  # never half a copy under the new name
        raise
    tally.copied += 1
    return done


def _clone_file(meta: Path, inode: int, parent: int, name: str) -> Cloned:
    return call(meta, CloneRequest(inode=inode, parent=parent, name=name), timeout=CLONE_TIMEOUT)


def _clone_tree(meta: Path, src: Path, dst: Path, st: os.stat_result, tally: _Tally) -> None:
    """Directory *src* as *dst*, top down: each directory made (its mode
    and owner), each file cloned, each symlink, FIFO or device made again.
    Hard links become separate files, as with cp without --preserve=links."""
    os.mkdir(dst, 0o700)
    tally.dirs += 1
    into = os.stat(dst).st_ino
    with os.scandir(src) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            child = entry.stat(follow_symlinks=False)
            target = dst / entry.name
            if stat.S_ISDIR(child.st_mode):
                _clone_tree(meta, Path(entry.path), target, child, tally)
            elif stat.S_ISREG(child.st_mode):
                _clone_or_copy(meta, Path(entry.path), target, child, into, tally)
            else:
                if stat.S_ISLNK(child.st_mode):
                    os.symlink(os.readlink(entry.path), target)
                else:
                    os.mknod(target, child.st_mode, child.st_rdev)
                _own(target, child)
                tally.others += 1
    _own(dst, st)


def _own(path: Path, st: os.stat_result) -> None:
    """The source's owner (when this user may give it) and mode."""
    try:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    except PermissionError:
        pass  # an unprivileged user's copy is theirs, as with cp
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
