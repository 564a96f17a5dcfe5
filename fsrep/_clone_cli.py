"""``fsrep clone SRC DST``: a copy of a file inside a mount that each side
makes from its own copy of the source (a reflink where the store's file
system can), replicated as one operation: no file data crosses the link."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from ._commands import Cloned, CloneRequest
from ._control import ControlError, call, daemon_for
from ._mounts import enclosing_mount

CLONE_TIMEOUT = 600.0  # a copy without reflinks is a copy of the file's data on each side


def add_parser(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("clone", help="copy a file inside a mount as one replicated operation (no data sent)",
                       formatter_class=fmt,
                       epilog="examples:\n  fsrep clone /mnt/vms/base.img /mnt/vms/vm7.img\n\n"
                              "both paths are in one fsrep mount and one consistency group; DST must not\n"
                              "exist. Each side copies its own source: a reflink (instant, extents shared)\n"
                              "where the store's file system has them, else a copy of the data (holes kept).\n"
                              "While the group is not InSync the copy is made here and kept dirty: the resync\n"
                              "sends it.")
    p.add_argument("src", metavar="SRC", help="a regular file in an fsrep mount")
    p.add_argument("dst", metavar="DST", help="the new file's path, in the same mount and group")


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
    if not stat.S_ISREG(st.st_mode):
        raise ControlError(f"{args.src} is not a regular file: fsrep clone copies one file")
    if os.path.lexists(parent / dst.name):
        raise ControlError(f"{args.dst} exists: give a new name")
    meta, _ = daemon_for(mount.mountpoint)
    done: Cloned = call(meta, CloneRequest(inode=st.st_ino, parent=into.st_ino, name=dst.name), timeout=CLONE_TIMEOUT)
    how = "replicated as one operation" if done.replicated else "kept dirty for the resync (the group is not InSync)"
    print(f"group {done.group}: cloned {args.src} to {args.dst} ({done.bytes} bytes; {how})")
    return 0
