"""``fsrep-move``: move a consistency group's data to another directory
while the mount serves it (see ``fsrep._move``).

Exit 0 once the group is served from its new place; any other end is one
line on stderr and exit 1, with nothing changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fsrep import ControlError, MoveRequest, Parser, StatusRequest, call, daemon_for

PROG = "fsrep-move"
MOVE_TIMEOUT = 60.0  # the daemon's checks and one rename


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Move a consistency group's data to another directory while clients keep working.",
        epilog="example:\n  fsrep-move /mnt/data --group /vms/vm1 --to /srv/disk2/vm1\n\n"
               "STORE2 is a new or empty directory on the file system of the group's data, outside the\n"
               "mount and the store. The move is one rename: open files, inode numbers and the relationship\n"
               "with the secondary stay, and nothing crosses the link. Later mounts serve the group from\n"
               "STORE2; its place in the store stays as an empty directory.\n"
               "exit status: 0 when the group is served from STORE2; 1 otherwise (nothing changed).")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--group", required=True, metavar="ID", help="the consistency group (id or path, like "
                                                                     "/vms/vm1)")
    parser.add_argument("--to", required=True, metavar="STORE2", help="the directory the group's data moves to")
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        outcome = run(args)
    except ControlError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; 'fsrep status' shows where the group is", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        print(f"group {outcome['group']} ({outcome['path']}): moved from {outcome['source']} to "
              f"{outcome['destination']} in {outcome['seconds']:.3f}s; it is {outcome['state']}, and nothing "
              f"crossed to the secondary")
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    meta, _ = daemon_for(args.mountpoint)
    moved = call(meta, MoveRequest(group=args.group, to=args.to), timeout=MOVE_TIMEOUT)
    group = call(meta, StatusRequest()).group(moved.group)
    return {**moved.to_json(), "state": group.state if group is not None else "unknown"}


if __name__ == "__main__":
    sys.exit(main())
