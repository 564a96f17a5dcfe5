"""The primary daemon: opens the store, connects each group's relationship,
mounts the FUSE filesystem, serves the control socket (its commands are
``_commands``'s table), and on unmount or SIGTERM drains what is in flight
and saves state."""

from __future__ import annotations

import functools
import logging
import os
import signal
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

import tracking
import transport as tp

from . import _arrivals as arrivals
from . import _declare as declare
from . import _metrics as metrics
from . import _move as move
from . import _move_across as move_across
from . import _move_primary as move_primary
from . import _notify as notify
from ._clone_backups import CloneBackups
from ._commands import Daemon, dispatch
from ._config import ConfigError, GroupRecord, GroupSpec, GroupStore
from ._control import serve_control
from ._groups import Group, Groups
from ._limits import raise_open_file_limit
from ._logs import reopen_logs, setup_logging
from ._ops import Operations
from ._resync import resync
from ._secondary import Secondary
from ._snapshots import SNAPSHOT_INTERVAL, SNAPSHOT_KEEP
from ._splitter import Relationship, Timeouts
from ._state import RelationshipState
from ._store import StoreLock, check_directory
from ._tree import Tree

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MountOptions:
    store: str
    mountpoint: str
    secondary: str
    key: bytes
    tls: ssl.SSLContext | None = None  # client_context: the session runs inside mutual TLS
    policy: str = "sync"
    writeback_cache: bool = False
    timeouts: Timeouts = Timeouts()
    resync_rate_limit: int = 0  # bytes/s for resyncs the daemon starts itself; 0: none
    lag_budget: int = 64 * 1024 * 1024  # semi-sync and async: unacknowledged bytes before changes wait
    verbose: bool = False
    groups: tuple[GroupSpec, ...] = ()  # declared groups, the default group first; none: the whole mount
    retire: tuple[str, ...] = ()  # paths of groups the store knows that are to be retired
    snapshot_interval: float = SNAPSHOT_INTERVAL  # seconds between scheduled snapshots; 0: none
    snapshot_keep: int = SNAPSHOT_KEEP  # scheduled snapshots kept
    clone_backup: str | None = None  # where clones made while out of sync are kept (``_clone_backups``)
    log_format: str = "text"  # or "json": one object per line (``_logs``)
    metrics: tuple[str, int] | None = None  # where to serve Prometheus metrics (``_metrics``); None: nowhere
    accept_moves: tuple[str, int] | None = None  # where groups moved from other primaries arrive (``_arrivals``)

    @property
    def specs(self) -> tuple[GroupSpec, ...]:
        """Every group to mount, the default group first."""
        return self.groups or (GroupSpec("", self.policy, self.secondary),)


def _group_trees(store: Path, specs: tuple[GroupSpec, ...], homes: dict[str, str]) -> tuple[Tree, list[Tree]]:
    """The whole store's tree and one per group (the default group's hides
    the others' roots). A declared group's root is made if missing; a group
    moved out of the store (*homes*: its path -> where its data is) is
    served from there, its root in the store an empty stand-in.

    Raises:
        ConfigError: a group's root is not a directory of the store, or a
            moved group's data is not where it was moved.
    """
    mount_tree = Tree(str(store))
    trees: list[Tree] = []
    try:
        for spec in specs[1:]:
            created = declare.make_root(mount_tree, spec.path)
            if created:
                log.info("group /%s: made %s in the store", spec.path, ", ".join(map(os.fsdecode, created)))
            home = homes.get(spec.path)
            if home is None:
                trees.append(mount_tree.subtree(spec.path.encode()))
                continue
            try:
                trees.append(mount_tree.beside(home))
            except OSError as exc:
                raise ConfigError(f"group /{spec.path} was moved to {home} (fsrep-move), which cannot be opened "
                                  f"({exc.strerror or exc}); mount the disk that holds it") from None
            mount_tree.graft(spec.path.encode(), trees[-1])
    except BaseException:
        for tree in [*trees, mount_tree]:
            tree.close()
        raise
    hidden = [spec.path.encode() for spec in specs[1:]]
    return mount_tree, [mount_tree.subtree(hidden=hidden), *trees]


def _load_group(records: dict[str, GroupRecord], spec: GroupSpec, tree: Tree) -> tuple[GroupRecord, str]:
    """The group's record (new if none) and, when tracking cannot say what
    differs, why the whole tree must be compared."""
    record = records.pop(spec.path, None)
    if record is None:
        if spec.path:
            declare.check_links(tree, spec.path)
        record = GroupRecord(id=str(uuid.uuid4()), path=spec.path, policy=spec.policy, secondary=spec.secondary)
        if next(tree.walk(), None) is not None:
            record.stale = True
            record.stale_reason = "the group held data before fsrep replicated it (baseline needed)"
        log.info("new consistency group %s for /%s%s", record.id, spec.path,
                 " (existing data: replica needs a baseline)" if record.stale else "")
        return record, record.stale_reason
    record.policy = spec.policy
    record.secondary = spec.secondary
    return record, ""


def _tracking_state(rel: Relationship, groups: GroupStore, baseline: str) -> None:
    """What may differ, as far as the store's state can tell: the saved
    dirty set if the replica was stale, plus — after a crash — every extent
    the activity log held active. When that cannot be known, everything."""
    record = rel.record
    if record.stale:
        rel.ledger.dirty = groups.load_dirty(record)
    if baseline:
        rel.ledger.mark_everything(baseline)
    if not record.clean_shutdown:
        try:
            payload = groups.activity(record).load()
            count = tracking.ActivityLog.recover(payload, rel.dirty)
            rel.snapshots.recover(payload)
            log.warning("group %s: the primary daemon did not shut down cleanly; %d active extents from the "
                        "activity log are dirty", record.id, count)
        except (tracking.StateError, ValueError) as exc:
            rel.ledger.mark_everything(f"unclean shutdown and no usable activity log: {exc}")
        rel.replica_may_be_ahead = True
        if not record.stale:
            record.stale = True
            record.stale_reason = "the primary daemon did not shut down cleanly"
            record.new_generation()
    if rel.dirty.everything:
        log.info("group %s: tracking cannot say what differs (%s): the resync starts from the newest common "
                 "snapshot, or compares the whole tree if there is none", record.id, rel.dirty.reason)


def _open_groups(opts: MountOptions, store: Path, groups: GroupStore) -> tuple[Tree, Groups]:
    """Every group of the mount with its tree, record and tracking state,
    not yet connected."""
    records = {record.path: record for record in groups.load_all()}
    declared = {spec.path for spec in opts.specs}
    specs = opts.specs + tuple(GroupSpec(r.path, r.policy, r.secondary) for r in records.values()
                               if r.arrived_from and r.path not in declared)  # moved here: declared by the record
    compare_whole: dict[str, str] = {}  # group path -> why its tracking cannot be trusted
    for record in records.values():
        if arrivals.settle(store, record):
            groups.save(record)
        if record.moving_phase:
            why = move_across.settle(store, record)
            if why is not None:
                compare_whole[record.path] = why
            groups.save(record)
        if move.settle_interrupted(store, record):
            groups.save(record)
    mount_tree, trees = _group_trees(store, specs, {r.path: r.store for r in records.values() if r.store})
    known_store = bool(records)
    opened, moved = [], []
    for spec, tree in zip(specs, trees, strict=True):
        if spec.path and known_store and spec.path not in records:
            moved.append(spec.path)
        record, baseline = _load_group(records, spec, tree)
        group = _group(opts, groups, record, tree)
        _tracking_state(group.rel, groups, baseline)
        if spec.path in compare_whole:
            group.rel.mark_everything_dirty(compare_whole[spec.path])
        if group.rel.clone_backups is not None:
            group.rel.clone_backups.prune(group.rel.dirty.clone_backups())
        opened.append(group)
    for record in records.values():  # known, not declared now
        if record.store:
            for tree in [*trees, mount_tree]:
                tree.close()
            raise ConfigError(f"group /{record.path} lives in {record.store} (fsrep-move): declare it as before, "
                              f"or move it back into the store (fsrep-move --to {store / record.path}) before "
                              f"retiring it")
    mount = Groups(opened)
    declare.retire(groups, records, mount, opts.retire)
    for path in moved:  # its data may still be in the replica of the group that held it before
        declare.left(mount.route(path.rpartition("/")[0].encode())[0], path)
    return mount_tree, mount


def _group(opts: MountOptions, groups: GroupStore, record: GroupRecord, tree: Tree) -> Group:
    """Group *record* of the mount, its data *tree*, with its relationship
    set up as the options say (not connected)."""
    rel = Relationship(record, groups, opts.key, opts.timeouts, tls=opts.tls)
    rel.scheduler.default_rate_limit = opts.resync_rate_limit
    rel.lag_budget = opts.lag_budget
    rel.snapshots.interval, rel.snapshots.keep = opts.snapshot_interval, opts.snapshot_keep
    if opts.clone_backup is not None:
        rel.clone_backups = CloneBackups(Path(opts.clone_backup) / record.id)
        tree.stage_in(rel.clone_backups.dir)
    return Group(rel, tree, record.path.encode())


async def _connect(group: Group, errors: list[str]) -> None:
    """Connect one group; a strict group must reach its secondary. What
    stops the mount goes into *errors*."""
    rel, record = group.rel, group.rel.record
    if record.moved_to:  # served read-only here; its primary is elsewhere
        return
    try:
        await rel.connect()
    except tp.AuthenticationError as exc:
        errors.append(f"secondary {record.secondary} refused authentication ({exc}); "
                      f"use the key file the secondary was started with")
    except tp.LinkDown as exc:
        if record.policy == "strict":
            errors.append(f"group /{record.path}: cannot reach secondary {record.secondary} ({exc}); policy "
                          f"strict needs it at mount time — start 'fsrep serve' there, or give the group policy "
                          f"sync")
        rel.link_lost(str(exc))


async def _connect_all(mount: Groups) -> None:
    """Connect every group at once (an unreachable secondary costs one
    connect timeout, not one per group).

    Raises:
        ConfigError: a group cannot be mounted as configured.
    """
    errors: list[str] = []
    async with trio.open_nursery() as nursery:
        for group in mount.all:
            nursery.start_soon(_connect, group, errors)
    if errors:
        raise ConfigError(errors[0])


async def _ready_to_serve(group: Group) -> str:
    """Under strict, resync a stale group before serving; the refusal, if
    the group still cannot be served."""
    rel, record = group.rel, group.rel.record
    if record.policy != "strict" or record.moved_to:
        return ""
    if rel.conn is not None and record.stale:  # other policies resync while serving
        log.info("group %s: replica is stale (%s); resync before serving", record.id, record.stale_reason)
        await rel.resync_now(f"the replica is stale: {record.stale_reason}")
    if rel.state is not RelationshipState.IN_SYNC:
        return (f"group {record.id} (/{record.path}) is {rel.state.value} ({record.stale_reason}); policy strict "
                f"serves only InSync groups — give the group policy sync to serve and resync")
    return ""


async def _listen(address: tuple[str, int]) -> list[trio.SocketListener]:
    """The listeners of ``--accept-moves``.

    Raises:
        ConfigError: the address cannot be listened on.
    """
    host, port = address
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"--accept-moves {host}:{port}: cannot listen there ({exc.strerror or exc}); give a free "
                          f"port") from None
    bound = listeners[0].socket.getsockname()
    log.info("accepting groups moved from other primaries on %s:%d (fsrep-move --to-primary)", bound[0], bound[1])
    return listeners


async def _accept_moves(opts: MountOptions, store: Path, groups: GroupStore, mount: Groups, mount_tree: Tree,
                        ops: Operations, listeners: list[trio.SocketListener], *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Take groups over from other primaries (``_arrivals``) until cancelled."""
    def new_group(record: GroupRecord) -> Group:
        group = _group(opts, groups, record, mount_tree.subtree(record.path.encode()))
        group.rel.scheduler.hook = functools.partial(resync, group.rel.stream, group.tree,
                                                    group.locator(ops.inodes))
        return group

    async def serve(group: Group, connected: Callable[[], object]) -> None:
        try:
            await _connect(group, [])
        finally:
            connected()
        await group.rel.serve()

    async with trio.open_nursery() as nursery:
        def start(group: Group, connected: Callable[[], object]) -> None:
            nursery.start_soon(serve, group, connected)

        taking = arrivals.Arrivals(store, groups, mount, mount_tree, new_group, start)
        await trio.to_thread.run_sync(taking.clear)
        secondary = Secondary(taking.dir, opts.key, arrivals=taking)
        await nursery.start(functools.partial(secondary.serve, listeners))
        nursery.start_soon(secondary.checkpoints)  # copies made durable as they come, not all at the cutover
        task_status.started()


async def _drain_all(mount: Groups, timeout: float) -> None:  # noqa: ASYNC109 - each group's bound
    """Let every group finish what is in flight (each within *timeout*),
    say goodbye to its secondary and save its state, all at once; not
    cut short by a cancellation around it."""
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as draining:
            for group in mount.all:
                draining.start_soon(functools.partial(group.rel.drain_and_close, timeout=timeout))


async def run_primary(opts: MountOptions, ready: Callable[[str], None]) -> None:
    """Mount and serve until unmounted or told to stop.

    *ready* is called once: with ``"ready"`` when the filesystem serves, or
    ``"error: ..."`` if start-up fails (the ConfigError is raised too).
    """
    store = check_directory(opts.store, "store")
    mountpoint = check_directory(opts.mountpoint, "mount point")
    if "," in str(store) or not str(store).isascii():
        raise ConfigError(f"store path {ascii(str(store))} holds a comma or a character that is not ASCII, which "
                          f"FUSE mount options cannot carry; give the store a path of ASCII characters and no commas")
    lock = StoreLock(store, "primary")
    setup_logging(lock.meta / "fsrep.log", stderr=True, verbose=opts.verbose, log_format=opts.log_format)
    raise_open_file_limit()
    groups = GroupStore(str(store))
    groups.reserve()
    move_primary.clear(groups)
    try:
        mount_tree, mount = _open_groups(opts, store, groups)
    except BaseException:
        lock.release()
        raise
    refusal = ""
    fuse_mounted = unmount = False

    async def on_signals() -> None:
        nonlocal unmount
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reopen_logs()
                    continue
                log.info("received %s: unmounting", signal.Signals(signum).name)
                notify.stopping(f"unmounting {mountpoint}: draining")
                unmount = True
                pyfuse3.terminate()
                return

    try:
        exposed = await metrics.open_metrics(opts.metrics) if opts.metrics is not None else []
        incoming = await _listen(opts.accept_moves) if opts.accept_moves is not None else []
        await _connect_all(mount)
        for group in mount.all:
            group.rel.scheduler.hook = functools.partial(resync, group.rel.stream, group.tree, None)
        async with trio.open_nursery() as nursery:
            for group in mount.all:
                if not group.rel.record.moved_to:
                    await nursery.start(group.rel.serve)
            for group in mount.all:
                refusal = refusal or await _ready_to_serve(group)
            if refusal:  # the secondaries are told goodbye; the groups' state stays as it was
                await _drain_all(mount, timeout=5)
                nursery.cancel_scope.cancel()
                return
            for group in mount.all:
                group.rel.record.clean_shutdown = False
                try:
                    groups.save(group.rel.record)
                except OSError as exc:
                    raise ConfigError(f"cannot write the state of group /{group.rel.record.path} in {lock.meta} "
                                      f"({exc.strerror or exc}); free space there and mount again") from None
            ops = Operations(mount_tree, mount, writeback_cache=opts.writeback_cache)
            for group in mount.all:
                group.rel.scheduler.hook = functools.partial(resync, group.rel.stream, group.tree,
                                                            group.locator(ops.inodes))
            options = set(pyfuse3.default_options)
            options |= {f"fsname={store}", "subtype=fsrep", "allow_other"}
            pyfuse3.init(ops, str(mountpoint), options)
            fuse_mounted = True
            for group in mount.all:
                record = group.rel.record
                log.info("mounted %s on %s; group %s (/%s) is %s (policy %s, secondary %s)", store, mountpoint,
                         record.id, record.path, group.rel.state.value, record.policy, record.secondary)
            if incoming:
                await nursery.start(_accept_moves, opts, store, groups, mount, mount_tree, ops, incoming)
            commands = functools.partial(dispatch, Daemon(store, mountpoint, mount, ops, opts.key, nursery.start_soon))
            await nursery.start(serve_control, lock.meta, commands)
            nursery.start_soon(on_signals)
            if exposed:
                await nursery.start(metrics.serve_metrics, exposed, metrics.of_mount(mount))
            ready("ready")
            notify.ready(f"serving {mountpoint}: " + ", ".join(f"/{g.rel.record.path} {g.rel.state.value}"
                                                              for g in mount.all))
            await pyfuse3.main(min_tasks=4, max_tasks=256)
            log.info("filesystem unmounted; draining")
            notify.stopping(f"{mountpoint} unmounted: draining")
            await _drain_all(mount, timeout=30)
            nursery.cancel_scope.cancel()
    finally:
        if fuse_mounted:
            pyfuse3.close(unmount=unmount)
        for group in mount.all:
            group.tree.close()
        mount_tree.close()
        lock.release()
        if refusal:
            raise ConfigError(refusal)
    log.info("primary daemon exits")
