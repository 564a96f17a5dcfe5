"""Running fsrep the Linux way: the ``mount.fuse.fsrep`` helper that
mount(8) and /etc/fstab use, and ``fsrep install-system``, which puts it
and the systemd units where the system looks for them.

How the helper works: ``mount -t fuse.fsrep STORE MOUNTPOINT -o OPTIONS``
makes mount(8) run ``mount.fuse.fsrep STORE MOUNTPOINT -o OPTIONS``. Each
option ``name=value`` is ``fsrep mount``'s ``--name value`` (``key_file``
is ``--key-file``; ``group`` may be given again), a bare ``name`` its flag
(``writeback_cache``); the options mount(8) and fstab add for themselves
(``rw``, ``defaults``, ``_netdev``, ``nofail``, ``x-systemd.*``...) are
left to them. Then it is ``fsrep mount``: the daemon starts, and the
helper returns once the mount serves, or with its one-line error.
Unmounting needs no helper: plain ``umount MOUNTPOINT`` ends the FUSE
session, and the daemon drains, saves its state and exits as for
``fsrep umount``.

Exit status as mount(8) expects of a helper: 1 for a usage error, 32
when the mount failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._control import ControlError

HELPER = "mount.fuse.fsrep"
USAGE_ERROR, MOUNT_FAILURE = 1, 32
# What mount(8), fstab and systemd say to themselves, or what any FUSE mount does anyway: not fsrep's to judge.
FOR_MOUNT = frozenset({
    "rw", "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group_owner", "_netdev", "nofail",
    "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "atime", "noatime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "lazytime", "nolazytime", "diratime", "nodiratime", "loud", "silent",
})
FOR_MOUNT_PREFIXES = ("x-", "comment=", "fsname=", "subtype=")

SERVE_UNIT = """\
# fsrep secondary store: instance %i reads /etc/fsrep/serve-%i.env, which sets
#   STORE=/srv/replica   LISTEN=0.0.0.0:7700   KEY_FILE=/etc/fsrep/key   FSREP_ARGS=  (more options, optional)
# systemctl enable --now fsrep-serve@backup
[Unit]
Description=fsrep secondary store (%i)
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
EnvironmentFile=/etc/fsrep/serve-%i.env
ExecStart={fsrep} serve ${{STORE}} --listen ${{LISTEN}} --key-file ${{KEY_FILE}} $FSREP_ARGS
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM: each replica's position is saved before the daemon exits
TimeoutStopSec=90
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

MOUNT_UNIT = """\
# fsrep primary mount: instance %i reads /etc/fsrep/mount-%i.env, which sets
#   STORE=/srv/data   MOUNTPOINT=/mnt/data   SECONDARY=backup:7700   KEY_FILE=/etc/fsrep/key
#   FSREP_ARGS=--policy sync   (more options, optional)
# systemctl enable --now fsrep-mount@data      (or an /etc/fstab line with type fuse.fsrep)
[Unit]
Description=fsrep primary mount (%i)
After=network-online.target local-fs.target
Wants=network-online.target

[Service]
Type=notify
EnvironmentFile=/etc/fsrep/mount-%i.env
ExecStart={fsrep} mount ${{STORE}} ${{MOUNTPOINT}} --secondary ${{SECONDARY}} --key-file ${{KEY_FILE}} \\
    --foreground $FSREP_ARGS
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM unmounts; what is in flight is drained to the secondary and the state saved before the daemon exits
TimeoutStopSec=90
KillMode=mixed
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""

UNITS = {"fsrep-serve@.service": SERVE_UNIT, "fsrep-mount@.service": MOUNT_UNIT}


def _mount_parser() -> argparse.ArgumentParser:
    from ._cli import _parser
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["mount"]


def mount_arguments(store: str, mountpoint: str, options: str, *, sloppy: bool = False) -> list[str]:
    """``fsrep mount``'s arguments for mount(8)'s *options* (``-o``).

    Raises:
        ControlError: an option fsrep does not know (unless *sloppy*), or
            one it cannot honour; the message names it.
    """
    flags: dict[str, argparse.Action] = {}
    for action in _mount_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--foreground", "--ready-fd"):
                flags[option[2:].replace("-", "_")] = action
    argv = [store, mountpoint]
    for item in filter(None, options.split(",")):
        name, has_value, value = item.partition("=")
        if item in FOR_MOUNT or item.startswith(FOR_MOUNT_PREFIXES):
            continue
        if item == "ro":
            raise ControlError("option ro: an fsrep mount is read-write (every change is replicated); mount the "
                               "replica's store read-only on the secondary instead")
        action = flags.get(name.replace("-", "_"))
        if action is None:
            if sloppy:
                continue
            raise ControlError(f"unknown mount option {name!r}; fsrep's are {', '.join(sorted(flags))} (see "
                               f"'fsrep mount --help': -o name=value is --name value)")
        takes_value = action.nargs != 0
        if takes_value != bool(has_value):
            raise ControlError(f"mount option {name!r} needs a value: {name}=..." if takes_value else
                               f"mount option {name!r} takes no value")
        argv += [action.option_strings[0], value] if takes_value else [action.option_strings[0]]
    return argv


def helper_main(argv: Sequence[str] | None = None) -> int:
    """``mount.fuse.fsrep STORE MOUNTPOINT [-sfnv] [-o OPTIONS]``, as mount(8) runs it."""
    from ._cli import main as fsrep_main
    args = list(sys.argv[1:] if argv is None else argv)
    positional: list[str] = []
    options: list[str] = []
    sloppy = fake = verbose = False
    while args:
        arg = args.pop(0)
        if arg == "-o" and args:
            options.append(args.pop(0))
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg in ("-t", "-N") and args:
            args.pop(0)  # the type is ours; another mount namespace is not supported (ignored as mount.fuse3 does)
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnvhrw"):
            sloppy |= "s" in arg
            fake |= "f" in arg
            verbose |= "v" in arg
        else:
            positional.append(arg)
    if len(positional) != 2:
        print(f"{HELPER}: usage: {HELPER} STORE MOUNTPOINT -o secondary=HOST:PORT,key_file=KEYFILE[,...] "
              f"(run by mount -t fuse.fsrep)", file=sys.stderr)
        return USAGE_ERROR
    source = positional[0].removeprefix("fsrep#")  # mount.fuse3's form of the source
    try:
        mount_args = mount_arguments(source, positional[1], ",".join(options), sloppy=sloppy)
    except ControlError as exc:
        print(f"{HELPER}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if verbose or fake:
        print(f"{HELPER}: fsrep mount {' '.join(mount_args)}")
    if fake:
        return 0
    return 0 if fsrep_main(["mount", *mount_args]) == 0 else MOUNT_FAILURE


# --- fsrep install-system -------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("install-system", help="install the mount helper and the systemd units", formatter_class=fmt,
                       epilog="examples:\n  fsrep install-system                  # /sbin/mount.fuse.fsrep and "
                              "/etc/systemd/system/fsrep-*@.service\n"
                              "  fsrep install-system --dry-run        # show what it would write\n\n"
                              "then, on the secondary:\n"
                              "  printf 'STORE=/srv/replica\\nLISTEN=0.0.0.0:7700\\nKEY_FILE=/etc/fsrep/key\\n' "
                              "> /etc/fsrep/serve-backup.env\n"
                              "  systemctl daemon-reload && systemctl enable --now fsrep-serve@backup\n"
                              "and on the primary, a line of /etc/fstab:\n"
                              "  /srv/data  /mnt/data  fuse.fsrep  secondary=backup:7700,key_file=/etc/fsrep/key,"
                              "_netdev,nofail  0 0\n"
                              "(or fsrep-mount@.service with /etc/fsrep/mount-NAME.env)")
    p.add_argument("--root", default="/", metavar="DIR", help="install under DIR instead of / (for a package)")
    p.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")


def cmd_install_system(args: argparse.Namespace) -> int:
    root = Path(args.root)
    fsrep = _installed("fsrep")
    helper = _installed(HELPER)
    planned: list[tuple[Path, str | None, str]] = [(root / "sbin" / HELPER, None, str(helper))]
    for name, text in UNITS.items():
        planned.append((root / "etc" / "systemd" / "system" / name, text.format(fsrep=fsrep), ""))
    for path, text, target in planned:
        if args.dry_run:
            print(f"{path} -> {target}" if text is None else f"--- {path}\n{text}")
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if text is None:
                if path.is_symlink() or path.exists():
                    path.unlink()
                path.symlink_to(target)
            else:
                path.write_text(text)
        except OSError as exc:
            raise ControlError(f"cannot write {path}: {exc.strerror or exc}") from None
        print(f"installed {path}" + (f" -> {target}" if text is None else ""))
    if not args.dry_run and args.root == "/":
        print("run 'systemctl daemon-reload' to have systemd read the units")
    return 0


def _installed(script: str) -> Path:
    """The absolute path of one of fsrep's commands, next to the running
    interpreter (the virtual environment's bin, or /usr/bin).

    Raises:
        ControlError: it is not installed there.
    """
    path = Path(sys.executable).parent / script
    if not os.access(path, os.X_OK):
        raise ControlError(f"{path} is not installed; install fsrep with pip (pip install .) first")
    return path.absolute()
