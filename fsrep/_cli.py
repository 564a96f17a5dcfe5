"""The ``fsrep`` command line. Every failure an operator can cause ends in
one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from . import _clone_cli as clone_cli
from . import _completion as completion
from . import _failover_cli as failover_cli
from . import _snapshot_cli as snapshot_cli
from . import _system as system
from . import _top as top
from ._args import (
    ACK_TIMEOUT,
    ASYNC_INTERVAL,
    LAG_BUDGET,
    RATE_LIMIT,
    RESYNC_STALL_TIMEOUT,
    SNAPSHOT_INTERVAL,
    SNAPSHOT_KEEP,
    UNDO_LIMIT,
    Parser,
)
from ._clone_backups import check_backup_dir
from ._commands import StatusRequest
from ._config import (
    POLICIES,
    ConfigError,
    check_group_path,
    declared_groups,
    declared_tls,
    parse_address,
    read_key,
    tls_context,
    write_key,
)
from ._control import ControlError, DaemonGone, call, daemon_for
from ._logs import LOG_FORMATS
from ._mounts import Mount, enclosing_mount, find_mount, is_dead, unmount
from ._notes import notes as _notes
from ._snapshots import SNAPSHOT_INTERVAL as SNAPSHOT_INTERVAL_DEFAULT
from ._snapshots import SNAPSHOT_KEEP as SNAPSHOT_KEEP_DEFAULT
from ._splitter import Timeouts
from ._store import check_directory

PROG = "fsrep"
READY_TIMEOUT = 60.0
UMOUNT_TIMEOUT = 120.0


class CommandError(Exception):
    """A one-line failure reported to the operator."""


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog=PROG, formatter_class=fmt,
        description="Synchronously replicated FUSE filesystem.",
        epilog="example:\n  fsrep keygen /etc/fsrep.key\n"
               "  fsrep serve /srv/replica --listen 0.0.0.0:7700 --key-file /etc/fsrep.key      # on the secondary\n"
               "  fsrep mount /srv/data /mnt/data --secondary backup:7700 --key-file /etc/fsrep.key\n"
               "  fsrep status /mnt/data")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="write a new random pre-shared key", formatter_class=fmt,
                       epilog="example:\n  fsrep keygen /etc/fsrep.key   # then copy it to the secondary")
    p.add_argument("keyfile", metavar="KEYFILE")

    p = sub.add_parser("serve", help="run the secondary (foreground)", formatter_class=fmt,
                       epilog="example:\n  fsrep serve /srv/replica --listen 127.0.0.1:7700 --key-file /etc/fsrep.key\n"
                              "  fsrep serve /srv/replica --listen 0.0.0.0:7700 --key-file /etc/fsrep.key "
                              "--tls-cert /etc/fsrep/backup.pem --tls-key /etc/fsrep/backup.key "
                              "--tls-ca /etc/fsrep/ca.pem")
    p.add_argument("store", metavar="STORE", help="directory that holds the replicas")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    _metrics_argument(p)
    p.add_argument("--key-file", required=True, metavar="KEYFILE")
    _tls_arguments(p, "primaries")
    p.add_argument("--undo-limit", type=UNDO_LIMIT, default="4G", metavar="BYTES",
                   help="how much old data a replica keeps while a resync overwrites it, so that it can be rolled "
                        "back if the primary is lost (default 4G; when it is reached the resync waits)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    _log_format_argument(p)

    p = sub.add_parser("mount", help="mount a primary store, replicating to a secondary", formatter_class=fmt,
                       epilog="example:\n  fsrep mount /srv/data /mnt/data --secondary 127.0.0.1:7700 "
                              "--key-file /etc/fsrep.key --policy sync\n"
                              "  fsrep mount /srv/data /mnt/data --secondary 127.0.0.1:7700 --key-file /etc/fsrep.key "
                              "--group vms/vm1 --group vms/vm2\n"
                              "  fsrep mount /srv/data /mnt/data --key-file /etc/fsrep.key --config /etc/fsrep.toml\n\n"
                              "a config file declares consistency groups (subtrees replicated as one unit each,\n"
                              "with their own policy and secondary); the rest of the mount is the default group:\n"
                              "  secondary = \"backup:7700\"      # default for every group\n"
                              "  policy = \"sync\"\n"
                              "  [[group]]\n"
                              "  path = \"vms/vm1\"\n"
                              "  policy = \"semi-sync\"           # optional\n"
                              "  secondary = \"backup2:7700\"     # optional\n"
                              "  [tls]                            # optional: as --tls-cert, --tls-key, --tls-ca\n"
                              "  cert = \"primary.pem\"           # (relative to the config file)\n"
                              "  key = \"primary.key\"\n"
                              "  ca = \"ca.pem\"")
    p.add_argument("store", metavar="STORE", help="the primary store (a plain directory)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--secondary", metavar="HOST:PORT", help="the secondary (required unless the config names one)")
    _metrics_argument(p)
    p.add_argument("--key-file", required=True, metavar="KEYFILE")
    p.add_argument("--config", metavar="FILE", help="a TOML file declaring consistency groups (see below)")
    _tls_arguments(p, "secondaries")
    p.add_argument("--group", action="append", default=[], metavar="PATH",
                   help="declare the subtree PATH a consistency group of its own (repeatable)")
    p.add_argument("--retire", action="append", default=[], metavar="PATH",
                   help="retire the group at PATH that an earlier mount declared: its subtree joins the group "
                        "that holds it now (repeatable)")
    p.add_argument("--policy", choices=POLICIES, default=None,
                   help="sync: every change returns once applied on both sides, and the mount keeps serving "
                        "when the secondary is unreachable (default); strict: like sync, but changes fail with "
                        "EIO when they cannot be replicated; semi-sync: changes return once applied here and "
                        "sent, waiting only past --lag-budget (fsync waits for both sides); async: changes are "
                        "shipped every --async-interval seconds (fsync is local)")
    p.add_argument("--lag-budget", type=LAG_BUDGET, default="64M", metavar="BYTES",
                   help="semi-sync and async: how much may be unacknowledged before changes wait (default 64M)")
    p.add_argument("--async-interval", type=ASYNC_INTERVAL, default=Timeouts().async_interval, metavar="SECONDS",
                   help=f"async: how often changes are shipped (default {Timeouts().async_interval:g})")
    p.add_argument("--accept-moves", metavar="HOST:PORT",
                   help="take consistency groups over from other primaries on HOST:PORT (fsrep-move --to-primary; "
                        "authenticated with --key-file)")
    p.add_argument("--clone-backup", metavar="DIR",
                   help="keep files cloned while a group is out of sync as reflinks in DIR (on the store's file "
                        "system), so the resync replays the clones from them even if their sources changed")
    p.add_argument("--foreground", action="store_true", help="stay attached (logs on stderr)")
    p.add_argument("--writeback-cache", action="store_true",
                   help="let the kernel buffer writes (write() returns before replication; "
                        "fsync and close still wait for both sides)")
    p.add_argument("--ack-timeout", type=ACK_TIMEOUT, default=Timeouts().ack, metavar="SECONDS",
                   help=f"declare the secondary unreachable after this long without an ack "
                        f"(default {Timeouts().ack:g})")
    p.add_argument("--resync-rate-limit", type=RATE_LIMIT, default="0", metavar="BYTES/s",
                   help="cap the data rate of resyncs the daemon starts by itself (suffix k, M, G; default: none)")
    p.add_argument("--resync-stall-timeout", type=RESYNC_STALL_TIMEOUT, default=Timeouts().resync_stall,
                   metavar="SECONDS",
                   help=f"restart a resync that made no progress for this long (default "
                        f"{Timeouts().resync_stall:g})")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    _log_format_argument(p)
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    p.add_argument("--snapshot-interval", type=SNAPSHOT_INTERVAL, default=SNAPSHOT_INTERVAL_DEFAULT,
                   metavar="SECONDS", help=f"take a pseudo snapshot of each group this often while it is InSync "
                                           f"(default {SNAPSHOT_INTERVAL_DEFAULT:g}; 0: never)")
    p.add_argument("--snapshot-keep", type=SNAPSHOT_KEEP, default=SNAPSHOT_KEEP_DEFAULT, metavar="N",
                   help=f"keep this many of the scheduled snapshots (default {SNAPSHOT_KEEP_DEFAULT}); those taken "
                        f"with 'fsrep snapshot create' stay until deleted")

    p = sub.add_parser("umount", help="drain, save state and unmount", formatter_class=fmt,
                       epilog="example:\n  fsrep umount /mnt/data")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")

    p = sub.add_parser("status", help="show each consistency group's state", formatter_class=fmt,
                       epilog="example:\n  fsrep status /mnt/data\n  fsrep status /mnt/data --json")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    top.add_parser(sub, fmt)
    snapshot_cli.add_parser(sub, fmt)
    failover_cli.add_parsers(sub, fmt)
    clone_cli.add_parser(sub, fmt)
    system.add_parser(sub, fmt)
    completion.add_parser(sub, fmt)
    return parser


def _log_format_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="the log's lines: text, or json (one object per line: time, level, group, position, event, "
                        "message); SIGHUP reopens the log file (default text)")


def _metrics_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics on HOST:PORT (path /metrics)")


def _metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    return None if args.metrics is None else parse_address(args.metrics, what="--metrics")


def _tls_arguments(p: argparse.ArgumentParser, peers: str) -> None:
    p.add_argument("--tls-cert", metavar="FILE",
                   help="mutual TLS (with --tls-key and --tls-ca): this host's certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM, unencrypted)")
    p.add_argument("--tls-ca", metavar="FILE", help=f"the CA (PEM) that signed the certificates of the {peers}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except (CommandError, ConfigError, ControlError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the last line of defence: one line, details in the log
        if logging.getLogger().handlers:  # a daemon: the traceback goes to its log file
            logging.getLogger(__name__).exception("internal error")
        print(f"{PROG} {args.command}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


# --- commands ---------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    write_key(args.keyfile)
    print(f"wrote a new key to {args.keyfile} (mode 0600); copy it to the other host")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ._secondary import run_secondary
    host, port = parse_address(args.listen, what="--listen")
    metrics = _metrics_address(args)
    _check_not_on_a_mount(check_directory(args.store, "store"))
    key = read_key(args.key_file)
    tls = tls_context(declared_tls(None, args.tls_cert, args.tls_key, args.tls_ca), server=True)
    trio.run(functools.partial(run_secondary, args.store, host, port, key, tls=tls, verbose=args.verbose,
                               undo_limit=int(args.undo_limit), log_format=args.log_format, metrics=metrics))
    return 0


def _mount_options(args: argparse.Namespace) -> Any:
    from ._primary import MountOptions
    specs = declared_groups(args.config, args.group, args.policy, args.secondary)
    retire = tuple(check_group_path(path, what="--retire") for path in args.retire)
    declared = [spec.path for spec in specs]
    if any(path in declared for path in retire):
        raise CommandError(f"--retire {next(p for p in retire if p in declared)}: the group is also declared")
    store = check_directory(args.store, "store")
    _clear_dead_mount(args.mountpoint, store)
    mountpoint = check_directory(args.mountpoint, "mount point")
    if find_mount(args.mountpoint) is not None:
        raise CommandError(f"{args.mountpoint} is already an fsrep mount")
    _check_apart(store, mountpoint)
    key = read_key(args.key_file)
    tls = tls_context(declared_tls(args.config, args.tls_cert, args.tls_key, args.tls_ca), server=False)
    backups = None if args.clone_backup is None else str(check_backup_dir(args.clone_backup, store, mountpoint))
    return MountOptions(clone_backup=backups,
                        store=args.store, mountpoint=args.mountpoint, secondary=specs[0].secondary, key=key,
                        tls=tls,
                        policy=specs[0].policy, groups=tuple(specs), retire=retire,
                        writeback_cache=args.writeback_cache,
                        timeouts=Timeouts(ack=args.ack_timeout, resync_stall=args.resync_stall_timeout,
                                          async_interval=args.async_interval),
                        resync_rate_limit=args.resync_rate_limit, lag_budget=args.lag_budget, verbose=args.verbose,
                        snapshot_interval=args.snapshot_interval, snapshot_keep=args.snapshot_keep,
                        log_format=args.log_format, metrics=_metrics_address(args),
                        accept_moves=None if args.accept_moves is None else parse_address(args.accept_moves,
                                                                                          what="--accept-moves"))


def _check_apart(store: Path, mountpoint: Path) -> None:
    """A store inside its own mount point, a mount point inside its store,
    or a store on an fsrep mount would make the daemon wait on itself."""
    if store == mountpoint or store in mountpoint.parents or mountpoint in store.parents:
        raise CommandError(f"store {store} and mount point {mountpoint} are nested; the daemon would serve its "
                           f"own store through itself — use two separate directories, e.g. /srv/data and /mnt/data")
    _check_not_on_a_mount(store)


def _check_not_on_a_mount(store: Path) -> None:
    """A store (primary or replica) on an fsrep mount would have its writes
    replicated again, perhaps back to the daemon that made them."""
    outer = enclosing_mount(store)
    if outer is not None:
        raise CommandError(f"store {store} is on the fsrep mount {outer.mountpoint}; a store must be a local "
                           f"directory (that mount's own store is {outer.store})")


def _clear_dead_mount(mountpoint: str, store: Path) -> None:
    """A mount point left behind by this store's daemon when it died is
    unmounted, as the operator mounting the store again would do first; a
    dead mount of anything else is left alone, with the command that clears it.

    Raises:
        CommandError: *mountpoint* is a dead mount of another store or
            filesystem, or it cannot be unmounted.
    """
    if not is_dead(mountpoint):
        return
    mount = find_mount(mountpoint)
    if mount is None:
        raise CommandError(f"{mountpoint} is a dead FUSE mount (its daemon is gone), not an fsrep one: unmount it "
                           f"first with 'fusermount3 -u -z {mountpoint}'")
    if Path(mount.store) != store:
        raise CommandError(f"{mountpoint} is a dead fsrep mount of {mount.store} (its daemon is gone): run "
                           f"'fsrep umount {mountpoint}' first")
    _unmount_dead(mount)
    print(f"{mountpoint} was left mounted by a daemon of this store that is gone; unmounted it", flush=True)


def _unmount_dead(mount: Mount) -> None:
    try:
        unmount(mount.mountpoint, lazy=True)
    except OSError as exc:
        raise CommandError(f"cannot unmount the dead mount {mount.mountpoint}: {exc.strerror}") from None


def cmd_mount(args: argparse.Namespace) -> int:
    opts = _mount_options(args)
    if args.foreground:
        return _run_foreground(opts, args.ready_fd)
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "fsrep", *args.argv, "--foreground", "--ready-fd", str(write_fd)]
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        proc = subprocess.Popen(cmd, stdin=null_in, stdout=null_out, stderr=null_out, pass_fds=(write_fd,),
                                start_new_session=True)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline().decode(errors="replace").strip()
    if line == "ready":
        status = call(Path(opts.store, ".fsrep"), StatusRequest())
        print(f"mounted {opts.store} on {opts.mountpoint} (pid {proc.pid})")
        for group in status.groups:
            print(f"  group {group.id} ({group.path}) is {group.state}, policy {group.policy}, "
                  f"secondary {group.secondary}")
        return 0
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    message = line.removeprefix("error: ") if line else \
        f"the daemon exited without mounting; see {Path(opts.store).resolve() / '.fsrep' / 'fsrep.log'}"
    raise CommandError(message)


def _run_foreground(opts: Any, ready_fd: int | None) -> int:
    from ._primary import run_primary
    said = False

    def ready(line: str) -> None:
        nonlocal said
        if said:
            return
        said = True
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, line.encode(errors="surrogateescape") + b"\n")
                os.close(ready_fd)

    try:
        trio.run(run_primary, opts, ready)
    except ConfigError as exc:
        ready(f"error: {exc}")
        raise
    except Exception as exc:
        ready(f"error: internal error: {type(exc).__name__}: {exc}")
        raise
    return 0


STATUS_COLUMNS = [("group", "id"), ("path", "path"), ("state", "state"), ("policy", "policy"),
                  ("secondary", "secondary"), ("connected", "connected"), ("acked seq", "last_acked_seq"),
                  ("ops in flight", "ops_in_flight"), ("bytes in flight", "bytes_in_flight"),
                  ("dirty bytes", "dirty_bytes"), ("lag bytes", "lag_bytes"), ("lag s", "lag_seconds")]


def cmd_status(args: argparse.Namespace) -> int:
    _, status = daemon_for(args.mountpoint)
    if args.json:
        print(json.dumps({"groups": [group.to_json() for group in status.groups]}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"fsrep {status.mountpoint} (store {status.store}, pid {status.pid})")
    for title, _ in STATUS_COLUMNS:
        table.add_column(title, overflow="fold")
    for group in status.groups:
        table.add_row(*[_cell(getattr(group, name)) for _, name in STATUS_COLUMNS])
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    for group in status.groups:
        for line in _notes(group):
            console.print(f"group {group.id}: {line}")
    return 0


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def cmd_umount(args: argparse.Namespace) -> int:
    try:
        _, status = daemon_for(args.mountpoint)
    except DaemonGone:
        mount = find_mount(args.mountpoint)
        if mount is None or not is_dead(mount.mountpoint):
            raise
        _unmount_dead(mount)
        print(f"the daemon of {args.mountpoint} was gone (killed or crashed): unmounted it lazily; the next "
              f"'fsrep mount' of {mount.store} recovers from the state it left in {mount.store}/.fsrep")
        return 0
    pid = status.pid
    try:
        unmount(status.mountpoint)
    except OSError as exc:
        raise CommandError(f"cannot unmount {args.mountpoint}: {exc.strerror}") from None
    deadline = time.monotonic() + UMOUNT_TIMEOUT
    while _alive(pid):
        if time.monotonic() > deadline:
            raise CommandError(f"unmounted, but daemon pid {pid} is still saving state after "
                               f"{UMOUNT_TIMEOUT:g}s; see {status.store}/.fsrep/fsrep.log")
        time.sleep(0.05)
    print(f"unmounted {args.mountpoint}; state saved in {status.store}/.fsrep")
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


COMMANDS = {"keygen": cmd_keygen, "serve": cmd_serve, "mount": cmd_mount, "umount": cmd_umount,
            "status": cmd_status, "snapshot": snapshot_cli.cmd_snapshot, "promote": failover_cli.cmd_promote,
            "demote": failover_cli.cmd_demote, "clone": clone_cli.cmd_clone, "top": top.cmd_top,
            "install-system": system.cmd_install_system,
            "completion": completion.cmd_completion}
