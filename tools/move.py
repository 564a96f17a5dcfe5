"""``fsrep-move``: move a consistency group's data to another directory
while the mount serves it (see ``fsrep._move`` and, for another file
system, ``fsrep._move_across``).

Exit 0 once the group is served from its new place; any other end is one
line on stderr and exit 1, with nothing changed. A copy to another file
system shows its progress; Ctrl-C before its cutover aborts it (as
``--abort`` from another shell does), and leaves the group where it was.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from fsrep import (
    ControlError,
    GroupStatus,
    MoveAbortRequest,
    Moved,
    MoveProgress,
    MoveRequest,
    Parser,
    StatusRequest,
    call,
    daemon_for,
)
from tools._display import Display

PROG = "fsrep-move"
MOVE_TIMEOUT = 7 * 24 * 3600.0  # a copy to another disk takes what the data takes; the daemon bounds each step
POLL = 0.25


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Move a consistency group's data to another directory while clients keep working.",
        epilog="examples:\n  fsrep-move /mnt/data --group /vms/vm1 --to /srv/disk2/vm1\n"
               "  fsrep-move /mnt/data --group /vms/vm1 --to-primary host3:7800\n"
               "  fsrep-move /mnt/data --group /vms/vm1 --abort\n\n"
               "STORE2 is a new or empty directory outside the mount and the store. On the file system of\n"
               "the group's data the move is one rename. On another one (another disk) the data is copied\n"
               "while clients work on, then the mount switches to the copy in a short pause; open files\n"
               "keep working, and the old data is removed. Either way the relationship with the secondary\n"
               "goes on: only clients' changes cross the link. Later mounts serve the group from STORE2;\n"
               "its place in the store stays as an empty directory. Ctrl-C (or --abort) before the cutover\n"
               "removes the copy and leaves the group where it was.\n\n"
               "With --to-primary the group moves to another running primary (mounted with --accept-moves and\n"
               "the same key): its data is copied there while clients work on, then that primary serves the\n"
               "group and relates to the same secondary from a snapshot all three hold (no new baseline); here\n"
               "the subtree is read-only (EROFS) from then on, and status says where it went.\n"
               "exit status: 0 when the group is served from STORE2; 1 otherwise (nothing changed).")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--group", required=True, metavar="ID", help="the consistency group (id or path, like "
                                                                     "/vms/vm1)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", metavar="STORE2", help="the directory the group's data moves to")
    where.add_argument("--to-primary", metavar="HOST:PORT",
                       help="the running primary the group moves to (its 'fsrep mount --accept-moves HOST:PORT'); "
                            "the subtree is read-only here afterwards")
    where.add_argument("--abort", action="store_true", help="stop the group's move (before its cutover): its copy "
                                                           "is removed; after a move to another primary that never "
                                                           "confirmed it took the group, take the group back (only "
                                                           "when that primary does not serve it)")
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.abort:
            meta, _ = daemon_for(args.mountpoint)
            aborted = call(meta, MoveAbortRequest(group=args.group))
            if aborted.reclaimed:
                print(f"group {aborted.group}: taken back from the move to the primary at {aborted.destination}, "
                      f"which never confirmed it took the group; writable here again")
            else:
                print(f"group {aborted.group}: the move to {aborted.destination} is aborted; its copy is removed")
            return 0
        outcome = run(args)
    except ControlError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(outcome, indent=2))
    elif args.to_primary:
        print(f"group {outcome['group']} ({outcome['path']}): moved to the primary at {outcome['destination']} in "
              f"{outcome['seconds']:.1f}s ({outcome['copied_bytes']} bytes copied; clients' changes waited "
              f"{outcome['pause_seconds']:.3f}s at the cutover); it is served there now, read-only here")
    elif outcome["copied_bytes"] or outcome["pause_seconds"]:
        print(f"group {outcome['group']} ({outcome['path']}): moved from {outcome['source']} to "
              f"{outcome['destination']} in {outcome['seconds']:.1f}s ({outcome['copied_bytes']} bytes copied; "
              f"clients' changes waited {outcome['pause_seconds']:.3f}s at the cutover); it is "
              f"{outcome['state']}, and only clients' changes crossed to the secondary")
    else:
        print(f"group {outcome['group']} ({outcome['path']}): moved from {outcome['source']} to "
              f"{outcome['destination']} in {outcome['seconds']:.3f}s; it is {outcome['state']}, and nothing "
              f"crossed to the secondary")
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Ask for the move and follow it (in this thread) while it runs (in
    another): a rename ends at once, a copy shows its progress."""
    meta, _ = daemon_for(args.mountpoint)
    result: list[Moved | ControlError] = []
    answered = threading.Event()  # not Thread.join: a Ctrl-C inside join() can leave it returning early

    def ask() -> None:
        try:
            result.append(call(meta, MoveRequest(group=args.group, to=args.to or "", to_primary=args.to_primary or ""),
                               timeout=MOVE_TIMEOUT))
        except ControlError as exc:
            result.append(exc)
        finally:
            answered.set()

    threading.Thread(target=ask, daemon=True).start()
    try:
        _follow(meta, args, answered)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: aborting the move", file=sys.stderr)
        try:
            call(meta, MoveAbortRequest(group=args.group))
        except ControlError as exc:  # it had cut over, or ended: the move's own answer says how
            print(f"{PROG}: {exc}", file=sys.stderr)
        answered.wait()
    answer = result[0] if result else ControlError("the move request ended without an answer; 'fsrep status' "
                                                   "shows where the group is")
    if isinstance(answer, ControlError):
        raise answer
    group = call(meta, StatusRequest()).group(answer.group)
    return {**answer.to_json(), "state": group.state if group is not None else "unknown"}


def _follow(meta: Path, args: argparse.Namespace, answered: threading.Event) -> None:
    """Show the group's move until the request is answered."""
    with Display("move", enabled=not args.json) as display:
        while not answered.wait(POLL):
            try:
                status = call(meta, StatusRequest())
            except ControlError:
                continue  # the answer says what happened
            group = next((g for g in status.groups if args.group == g.id or args.group.strip("/") == g.path.strip("/")),
                         None)
            progress = group.move if isinstance(group, GroupStatus) else None
            if progress is not None and not progress.finished:
                _show(display, progress)


def _show(display: Display, progress: MoveProgress) -> None:
    eta = progress.eta_seconds
    display.show(progress.bytes_copied, progress.bytes_total, f"move: {progress.phase}",
                 f"{progress.phase}: copied {progress.bytes_copied} of {progress.bytes_total} B, "
                 f"{progress.bytes_per_second} B/s, ETA {'-' if eta is None else f'{eta:.0f}s'}"
                 + (f", {progress.passes} catch-up passes" if progress.passes else ""))


if __name__ == "__main__":
    sys.exit(main())
