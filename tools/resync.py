"""``fsrep-resync``: start (or join) a resync of a mounted group and follow
it to the end with a progress bar. Without ``--group``, every group of the
mount is resynced (all started at once, followed one after the other).

Exit 0 only when every group resynced is InSync at the end and, for
``--mode checksum``, every region was compared. Any other end is one line on stderr
and exit 1; the daemon keeps the resync going (or resumes it when the
secondary is back) whether or not this command still watches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fsrep import (
    MODES,
    RATE_LIMIT,
    ControlError,
    GroupStatus,
    Parser,
    ResyncProgress,
    ResyncRequest,
    ResyncStarted,
    StatusRequest,
    call,
    daemon_for,
    snapshot_name,
)
from tools._display import Display

PROG = "fsrep-resync"
POLL = 0.25


class ResyncFailed(Exception):
    """The resync did not end InSync (one line for the operator)."""


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start or join a resync of a consistency group and show its progress.",
        epilog="examples:\n  fsrep-resync /mnt/data\n  fsrep-resync /mnt/data --mode checksum --rate-limit 50M\n"
               "  fsrep-resync /mnt/data --json\n\n"
               "  fsrep-resync /mnt/data --mode snapshot --snapshot before-upgrade\n"
               "  fsrep-resync /mnt/data --path /mnt/data/vms/vm2.img\n"
               "  fsrep-resync /mnt/data --path vms/vm2.img --from secondary\n\n"
               "modes: quick copies the regions tracking marked dirty; snapshot copies what changed on\n"
               "either side since a common pseudo snapshot (the newest, or --snapshot NAME); checksum\n"
               "compares every region by xxh3 digest and copies those that differ; full re-copies\n"
               "everything (writers wait). quick falls back to snapshot, then checksum, by itself when\n"
               "tracking cannot say what differs.\n"
               "exit status: 0 when the group is InSync (and, for checksum, verified); 1 otherwise.")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.add_argument("--group", metavar="ID", help="the consistency group (id or path, like /vms/vm1; "
                                                       "default: every group of the mount)")
    parser.add_argument("--mode", choices=MODES, default="quick")
    parser.add_argument("--snapshot", type=snapshot_name, metavar="NAME",
                        help="with --mode snapshot: resync from this snapshot (default: the newest both sides hold)")
    parser.add_argument("--rate-limit", type=RATE_LIMIT, default=0, metavar="BYTES/s",
                        help="cap the resync's data rate (suffix k, M, G; never below 1M)")
    parser.add_argument("--discard", choices=("primary", "secondary"),
                        help="resolve a split brain by giving up this side: its changes since the newest snapshot "
                             "both sides took are copied to that side's .fsrep/divergent/ first, then overwritten")
    parser.add_argument("--path", metavar="PATH",
                        help="compare this file or directory (in the mount: absolute, or relative to MOUNTPOINT) with "
                             "the replica now and send only what differs — after it was changed outside the mount, "
                             "e.g. cloned in the store with cp --reflink")
    parser.add_argument("--from", dest="source", choices=("secondary",),
                        help="with --path FILE: restore that file from the secondary (this side's copy, if any, is "
                             "kept in STORE/.fsrep/divergent/ first)")
    parser.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.snapshot is not None and args.mode != "snapshot":
        parser.error("--snapshot goes with --mode snapshot")
    if args.discard is not None and (args.mode != "quick" or args.snapshot is not None):
        parser.error("--discard chooses the mode and the snapshot itself")
    if args.path is not None and (args.group is not None or args.mode != "quick" or args.snapshot or args.discard):
        parser.error("--path finds its group itself and compares by digest: no --group, --mode, --snapshot or "
                     "--discard with it")
    if args.source is not None and args.path is None:
        parser.error("--from secondary restores the file named by --path")
    try:
        result = run(args)
    except (ControlError, ResyncFailed) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: stopped watching; the resync goes on in the daemon", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for outcome in result.get("groups", [result]):
            _say_after(outcome)
    return 0


def _say_after(outcome: dict[str, Any]) -> None:
    """What an operator should know of a run that ended well."""
    if outcome.get("restored"):
        kept = f"; this side's copy was kept in {outcome['kept']}" if outcome.get("kept") else ""
        print(f"{outcome['restored']} was restored from the secondary{kept}")
    elif outcome.get("kept"):
        side = outcome.get("kept_side") or "secondary"
        print(f"the {side}'s side of the split brain is kept on the {side} in {outcome['kept']}")
    if outcome.get("bytes_checked") and outcome.get("mode") == "quick":  # a --path run, or replayed clones
        print(f"group {outcome['group']}: {outcome['bytes_checked']} B compared by digest, "
              f"{outcome['bytes_mismatched']} B differed; {outcome['bytes_copied']} B sent")
    if outcome.get("clones_replayed"):
        print(f"group {outcome['group']}: {outcome['clones_replayed']} files cloned while out of sync were cloned "
              f"on the secondary too ({outcome['bytes_replayed_as_clones']} B), then compared by digest")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Resync the group named, or every group; the outcome of one group, or
    ``{"groups": [...]}`` for several."""
    meta, status = daemon_for(args.mountpoint)
    if args.path is not None:
        path = mount_relative(status.mountpoint, args.path)
        started = call(meta, ResyncRequest(path=path, rate_limit=int(args.rate_limit),
                                           restore=True if args.source else None))
        if args.source and not args.json:
            print(f"group {started.group}: /{path} is restored from the secondary (run {started.run})", flush=True)
        elif not args.json:
            print(f"group {started.group}: /{path} is compared with the replica: {started.files} files "
                  f"({started.bytes} B) by digest, {started.directories} directories by their entries", flush=True)
        return _follow(meta, started, args)
    names = [args.group] if args.group is not None else [group.id for group in status.groups]
    started, outcomes, failures = [], [], []
    for name in names:  # start them all first: groups resync side by side
        try:
            started.append(call(meta, ResyncRequest(group=name, mode=args.mode, rate_limit=int(args.rate_limit),
                                                    snapshot=args.snapshot, discard=args.discard)))
        except ControlError as exc:
            failures.append(str(exc))
    for run in started:
        try:
            outcomes.append(_follow(meta, run, args))
        except ResyncFailed as exc:
            failures.append(f"group {run.group}: {exc}" if len(names) > 1 else str(exc))
    if failures:
        raise ResyncFailed("; ".join(failures))
    return outcomes[0] if len(outcomes) == 1 else {"groups": outcomes}


def mount_relative(mountpoint: str, path: str) -> str:
    """*path* (absolute, or relative to *mountpoint*) relative to the
    mount's root; its last component is not followed if a symlink.

    Raises:
        ResyncFailed: it is not in the mount.
    """
    root = os.path.realpath(mountpoint)
    full = os.path.normpath(os.path.join(root, path))
    parent, name = os.path.split(full)
    resolved = os.path.join(os.path.realpath(parent), name) if name else os.path.realpath(parent)
    relative = os.path.relpath(resolved, root)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        raise ResyncFailed(f"{path} is not in the mount {mountpoint}")
    return "" if relative == os.curdir else relative


def _follow(meta: Path, started: ResyncStarted, args: argparse.Namespace) -> dict[str, Any]:
    """Show one group's run until it ends; its outcome."""
    run_id = started.run
    if not args.json:
        limit = f", at most {started.rate_limit} bytes/s" if started.rate_limit else ""
        basis = f" from snapshot {args.snapshot}" if args.snapshot else ""
        print(f"group {started.group}: {started.mode} resync{basis} (run {run_id}){limit}", flush=True)
    with Display("resync", enabled=not args.json) as display:
        while True:
            group = _group(meta, started.group)
            progress = group.resync if group.resync is not None and group.resync.id == run_id else None
            if progress is not None and progress.finished:
                _show(display, progress)
                return _outcome(group, _summary(progress), started.mode)
            ended = next((r for r in group.resync_recent if r.id == run_id), None)
            if ended is not None and progress is None:  # ended while another run took over
                return _outcome(group, _summary(group.resync) | dataclasses.asdict(ended), started.mode)
            queued = group.resync_queued is not None and group.resync_queued.id == run_id
            if progress is None and not queued:
                raise ResyncFailed(f"run {run_id} is no longer known to the daemon; see its log")
            if queued and not group.connected:
                raise ResyncFailed(f"the link to {group.secondary} was lost ({group.last_error or 'no reason'})"
                                   f"; the resync resumes by itself when it is back — run {PROG} again to follow it")
            if progress is not None:
                _show(display, progress)
            time.sleep(POLL)


def _group(meta: Path, group_id: str) -> GroupStatus:
    group = call(meta, StatusRequest()).group(group_id)
    if group is None:
        raise ResyncFailed(f"group {group_id} is gone from the daemon's status")
    return group


def _summary(progress: ResyncProgress | None) -> dict[str, Any]:
    return {} if progress is None else progress.to_json()


def _outcome(group: GroupStatus, progress: dict[str, Any], mode: str) -> dict[str, Any]:
    if progress["outcome"] != "InSync" or group.state != "InSync":
        raise ResyncFailed(f"the resync ended {progress['outcome'] or 'unfinished'}; the group is {group.state}"
                           f" ({group.stale_reason or group.last_error or 'see the daemon log'})")
    if mode == "checksum" and not progress["verified"]:
        raise ResyncFailed("the group is InSync but the checksum comparison did not complete; run it again")
    return {"group": group.id, "state": group.state, **progress}


def _show(display: Display, progress: ResyncProgress) -> None:
    done = progress.bytes_copied + progress.bytes_checked
    dirs = progress.directories_remaining
    phase = f" ({progress.directories_checked} dirs, {dirs} left)" if dirs else ""
    eta = progress.eta_seconds
    display.show(done, done + progress.bytes_remaining, f"{progress.mode} resync{phase}",
                 f"{progress.percent:5.1f}%  "
                 + (f"{progress.directories_checked} directories compared, {dirs} left, " if dirs else "")
                 + f"copied {progress.bytes_copied} B, compared "
                 f"{progress.bytes_checked} B, {progress.bytes_remaining} B left, "
                 f"{progress.bytes_per_second} B/s, ETA {'-' if eta is None else f'{eta:.0f}s'}"
                 + (f"  -> {progress.outcome}" if progress.finished else ""), final=progress.finished)


if __name__ == "__main__":
    sys.exit(main())
