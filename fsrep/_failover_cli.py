"""``fsrep promote REPLICA`` and ``fsrep demote STORE --into SECONDARY_STORE``:
failover and failback, through the secondary daemon's control socket when it
runs, else on the stopped store under its lock (``_failover`` does the work)."""

from __future__ import annotations

import argparse

from . import _failover as failover
from ._config import META_DIR
from ._control import DaemonGone, call
from ._secondary_commands import PROMOTE_TIMEOUT, PromoteRequest
from ._store import StoreLock


def add_parsers(sub: argparse._SubParsersAction, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("promote", help="make a replica its group's primary store (failover)", formatter_class=fmt,
                       epilog="example (on the secondary's host):\n"
                              "  fsrep promote /srv/replica/5f0c...-group-id\n"
                              "  fsrep mount /srv/replica/5f0c...-group-id /mnt/data --secondary oldprimary:7700 "
                              "--key-file /etc/fsrep.key\n\n"
                              "works with 'fsrep serve' running (it stops applying the group) or stopped. From\n"
                              "then on the replica refuses the old primary; 'fsrep demote' there makes the old\n"
                              "primary's store this group's replica, resynced from the newest common snapshot.")
    p.add_argument("replica", metavar="REPLICA", help="the group's replica: SECONDARY_STORE/<group-id>")
    p.add_argument("--force", action="store_true",
                   help="promote even while the old primary is connected (its session is cut off)")
    p = sub.add_parser("demote", help="make an old primary store its group's replica (failback)",
                       formatter_class=fmt,
                       epilog="example (on the old primary's host, the store not mounted):\n"
                              "  fsrep demote /srv/data --into /srv/replica\n"
                              "  fsrep serve /srv/replica --listen 0.0.0.0:7700 --key-file /etc/fsrep.key\n\n"
                              "the store is renamed to SECONDARY_STORE/<group-id> (the same file system: no data\n"
                              "is copied), with its record of what changed since each snapshot, so the promoted\n"
                              "primary resyncs only what differs since the newest common one.")
    p.add_argument("store", metavar="STORE", help="the old primary store (not mounted)")
    p.add_argument("--into", required=True, metavar="SECONDARY_STORE",
                   help="the secondary store to keep it in, on the same file system")


def cmd_promote(args: argparse.Namespace) -> int:
    store, gid = failover.replica_of(args.replica)
    try:
        promoted = call(store / META_DIR, PromoteRequest(group=gid, force=args.force), timeout=PROMOTE_TIMEOUT)
    except DaemonGone:  # no daemon serves the store: done here, under its lock (none may start meanwhile)
        lock = StoreLock(store, "promote")
        try:
            promoted = failover.promote(store, gid)
        finally:
            lock.release()
    for line in failover.describe(promoted):
        print(line)
    return 0


def cmd_demote(args: argparse.Namespace) -> int:
    demoted = failover.demote(args.store, args.into)
    kept = ", ".join(demoted.snapshots) or "none"
    print(f"group {demoted.group}: {args.store} is now its replica {demoted.replica}, at seq {demoted.seq}; "
          f"snapshots kept: {kept}")
    if demoted.dropped:
        print(f"not kept: {demoted.dropped}")
    print(f"the store's fsrep state is set aside in {demoted.set_aside}")
    print(f"serve it: fsrep serve {args.into} --listen HOST:PORT --key-file KEY")
    return 0
