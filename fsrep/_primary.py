"""The primary daemon: opens the store, connects each group's relationship,
mounts the FUSE filesystem, serves the control socket, and on unmount or
SIGTERM drains what is in flight and saves state."""

from __future__ import annotations

import functools
import logging
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyfuse3
import trio

import tracking
import transport as tp

from ._config import ConfigError, GroupRecord, GroupStore
from ._control import serve_control
from ._logs import setup_logging
from ._ops import Operations
from ._progress import MODES
from ._resync import resync
from ._splitter import Relationship, Timeouts
from ._state import RelationshipState
from ._store import StoreLock, check_directory
from ._tree import RESERVED, Tree

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MountOptions:
    store: str
    mountpoint: str
    secondary: str
    key: bytes
    policy: str = "sync"
    writeback_cache: bool = False
    timeouts: Timeouts = Timeouts()
    resync_rate_limit: int = 0  # bytes/s for resyncs the daemon starts itself; 0: none
    lag_budget: int = 64 * 1024 * 1024  # semi-sync and async: unacknowledged bytes before changes wait
    verbose: bool = False


def _load_group(groups: GroupStore, store: Path, opts: MountOptions) -> tuple[GroupRecord, str]:
    """The store's group (new if none) and, when tracking cannot say what
    differs, why the whole tree must be compared."""
    records = groups.load_all()
    if not records:
        has_data = any(name != RESERVED.decode() for name in os.listdir(store))
        record = GroupRecord(id=str(uuid.uuid4()), path="", policy=opts.policy, secondary=opts.secondary)
        if has_data:
            record.stale = True
            record.stale_reason = "the store held data before fsrep replicated it (baseline needed)"
        log.info("new consistency group %s for %s%s", record.id, store,
                 " (existing data: replica needs a baseline)" if has_data else "")
        return record, record.stale_reason
    record = records[0]
    record.policy = opts.policy
    record.secondary = opts.secondary
    return record, ""


def _tracking_state(rel: Relationship, groups: GroupStore, baseline: str) -> None:
    """What may differ, as far as the store's state can tell: the saved
    dirty set if the replica was stale, plus — after a crash — every extent
    the activity log held active. When that cannot be known, everything."""
    record = rel.record
    if record.stale:
        rel.dirty = groups.load_dirty(record)
    if baseline:
        rel.dirty.mark_everything(baseline)
    if not record.clean_shutdown:
        try:
            count = tracking.ActivityLog.recover(groups.activity(record).load(), rel.dirty)
            log.warning("group %s: the primary daemon did not shut down cleanly; %d active extents from the "
                        "activity log are dirty", record.id, count)
        except (tracking.StateError, ValueError) as exc:
            rel.dirty.mark_everything(f"unclean shutdown and no usable activity log: {exc}")
        rel.replica_may_be_ahead = True
        if not record.stale:
            record.stale = True
            record.stale_reason = "the primary daemon did not shut down cleanly"
            record.new_generation()
    if rel.dirty.everything:
        log.info("group %s: the whole tree will be compared: %s", record.id, rel.dirty.reason)


def start_resync(rel: Relationship, req: dict[str, Any]) -> dict[str, Any]:
    """The control socket's ``resync`` command: start or join a run."""
    mode, rate_limit, group = req.get("mode", "quick"), req.get("rate_limit", 0), req.get("group")
    if group not in (None, rel.record.id, "/" + rel.record.path):
        return {"error": f"no consistency group {group!r} on this mount (groups: {rel.record.id})"}
    if mode not in MODES:
        return {"error": f"unknown resync mode {mode!r}: use one of {', '.join(MODES)}"}
    if not isinstance(rate_limit, int) or isinstance(rate_limit, bool) or rate_limit < 0:
        return {"error": f"rate limit must be a whole number of bytes per second, not {rate_limit!r}"}
    if mode == "checksum" and rel.record.policy == "strict" and rel.state is RelationshipState.IN_SYNC:
        return {"error": f"group {rel.record.id} uses policy strict: while a checksum resync compares "
                         f"directories, changes in them would fail with EIO — remount with --policy sync to run it"}
    if rel.conn is None:
        return {"error": f"group {rel.record.id} is {rel.state.value} and its secondary {rel.record.secondary} is "
                         f"unreachable ({rel.last_error or 'not connected'}); a resync starts by itself when it is "
                         f"back"}
    try:
        run = rel.request_resync(mode, reason="requested by fsrep-resync", rate_limit=rate_limit)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"group": rel.record.id, "run": run.id, "mode": run.mode, "rate_limit": run.rate_limit}


async def run_primary(opts: MountOptions, ready: Callable[[str], None]) -> None:
    """Mount and serve until unmounted or told to stop.

    *ready* is called once: with ``"ready"`` when the filesystem serves, or
    ``"error: ..."`` if start-up fails (the ConfigError is raised too).
    """
    store = check_directory(opts.store, "store")
    mountpoint = check_directory(opts.mountpoint, "mount point")
    if "," in str(store):
        raise ConfigError(f"store path {store} contains a comma, which FUSE mount options cannot carry")
    lock = StoreLock(store, "primary")
    setup_logging(lock.meta / "fsrep.log", stderr=True, verbose=opts.verbose)
    groups = GroupStore(str(store))
    record, baseline = _load_group(groups, store, opts)
    rel = Relationship(record, groups, opts.key, opts.timeouts)
    rel.default_rate_limit = opts.resync_rate_limit
    rel.lag_budget = opts.lag_budget
    _tracking_state(rel, groups, baseline)
    try:
        await rel.connect()
    except tp.AuthenticationError as exc:
        raise ConfigError(f"secondary {opts.secondary} refused authentication ({exc}); "
                          f"use the key file the secondary was started with") from None
    except tp.LinkDown as exc:
        if opts.policy == "strict":
            raise ConfigError(f"cannot reach secondary {opts.secondary} ({exc}); policy strict needs it at "
                              f"mount time — start 'fsrep serve' there or mount with --policy sync") from None
        rel.link_lost(str(exc))
    tree = Tree(str(store))
    rel.resync_hook = functools.partial(resync, rel, tree, None)
    refusal = ""
    fuse_mounted = unmount = False

    async def control(req: dict[str, Any]) -> dict[str, Any]:
        if req.get("cmd") == "status":
            return {"pid": os.getpid(), "store": str(store), "mountpoint": str(mountpoint),
                    "groups": [rel.statistics()]}
        if req.get("cmd") == "resync":
            return start_resync(rel, req)
        return {"error": f"unknown command {req.get('cmd')!r}"}

    async def on_signals() -> None:
        nonlocal unmount
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s: unmounting", signal.Signals(signum).name)
                unmount = True
                pyfuse3.terminate()
                return

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rel.serve)
            if rel.conn is not None and record.stale and opts.policy == "strict":  # others resync while serving
                log.info("group %s: replica is stale (%s); resync before serving", record.id,
                         record.stale_reason)
                await rel.resync_now(f"the replica is stale: {record.stale_reason}")
            if opts.policy == "strict" and rel.state is not RelationshipState.IN_SYNC:
                refusal = (f"group {record.id} is {rel.state.value} ({record.stale_reason}); policy strict "
                           f"serves only InSync groups — mount with --policy sync to serve and resync")
                nursery.cancel_scope.cancel()
                return
            record.clean_shutdown = False
            groups.save(record)
            ops = Operations(tree, rel, writeback_cache=opts.writeback_cache)
            rel.resync_hook = functools.partial(resync, rel, tree, ops.inodes)
            options = set(pyfuse3.default_options)
            options |= {f"fsname={store}", "subtype=fsrep", "allow_other"}
            pyfuse3.init(ops, str(mountpoint), options)
            fuse_mounted = True
            log.info("mounted %s on %s; group %s is %s (policy %s, secondary %s)", store, mountpoint, record.id,
                     rel.state.value, record.policy, record.secondary)
            await nursery.start(serve_control, lock.meta, control)
            nursery.start_soon(on_signals)
            ready("ready")
            await pyfuse3.main(min_tasks=4, max_tasks=256)
            log.info("filesystem unmounted; draining")
            with trio.CancelScope(shield=True):
                await rel.drain_and_close(timeout=30)
            nursery.cancel_scope.cancel()
    finally:
        if fuse_mounted:
            pyfuse3.close(unmount=unmount)
        tree.close()
        lock.release()
        if refusal:
            raise ConfigError(refusal)
    log.info("primary daemon exits")
