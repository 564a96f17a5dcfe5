"""``fsrep snapshot MOUNTPOINT create|list|delete``: the pseudo snapshots
of a mount's groups, through its daemon's control socket."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._args import snapshot_name
from ._commands import SnapshotCreateRequest, SnapshotDeleteRequest, SnapshotListRequest, SnapshotTaken
from ._control import call, daemon_for
from ._status import SnapshotList, SnapshotStatus

CREATE_TIMEOUT = 120.0  # two drains of the stream: each bounded by the daemon's ack timeout


def add_parser(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("snapshot", help="take, list and delete pseudo snapshots (common points with the secondary)",
                       formatter_class=fmt,
                       epilog="examples:\n  fsrep snapshot /mnt/data create --name before-upgrade\n"
                              "  fsrep snapshot /mnt/data list\n  fsrep snapshot /mnt/data list --json\n"
                              "  fsrep snapshot /mnt/data delete before-upgrade\n\n"
                              "a snapshot copies no data: both sides mark the same point of the replication\n"
                              "stream and record what changes after it, so a resync from it (fsrep-resync\n"
                              "--mode snapshot) moves only that. Taking one needs the group InSync; writes go on.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("create", help="take a snapshot of a group")
    a.add_argument("--group", metavar="ID", help="the group's id or path (needed when the mount has several)")
    a.add_argument("--name", type=snapshot_name, metavar="NAME", help="letters, digits and ._:+- (default: snap-TIME)")
    a = actions.add_parser("list", help="every group's snapshots")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = actions.add_parser("delete", help="retire a snapshot on both sides")
    a.add_argument("name", type=snapshot_name, metavar="NAME")
    a.add_argument("--group", metavar="ID", help="the group's id or path (needed when the mount has several)")


def cmd_snapshot(args: argparse.Namespace) -> int:
    meta, _ = daemon_for(args.mountpoint)
    if args.action == "create":
        taken = call(meta, SnapshotCreateRequest(group=args.group, name=args.name), timeout=CREATE_TIMEOUT)
        print(f"group {taken.group}: took {_line(taken.snapshot)}")
    elif args.action == "delete":
        gone: SnapshotTaken = call(meta, SnapshotDeleteRequest(name=args.name, group=args.group))
        print(f"group {gone.group}: deleted snapshot {gone.snapshot.name}")
    else:
        listing: SnapshotList = call(meta, SnapshotListRequest())
        if args.json:
            print(json.dumps(listing.to_json(), indent=2))
            return 0
        _table(listing)
    return 0


def _line(snapshot: SnapshotStatus) -> str:
    return f"snapshot {snapshot.name} at seq {snapshot.seq} of generation {snapshot.generation[:8]}"


def _table(listing: SnapshotList) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="fsrep snapshots")
    for title in ("group", "path", "name", "taken (UTC)", "position", "kind", "common", "changed since"):
        table.add_column(title, overflow="fold")
    for group in listing.groups:
        for s in group.snapshots:
            table.add_row(group.group, group.path, s.name, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.created)),
                          f"seq {s.seq} of {s.generation[:8]}", "automatic" if s.auto else "taken",
                          "yes" if s.common else "no", f"{s.changed_bytes} bytes")
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
