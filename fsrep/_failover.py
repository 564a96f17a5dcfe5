"""Failover and failback, on disk: ``fsrep promote`` makes a group's replica
the group's primary store, ``fsrep demote`` makes an old primary store the
group's replica — each keeping its record of what changed since the
snapshots both sides hold, so the resync between them starts at the newest
of those and never copies everything.

How this works:

- **Promote** (``promote``; by the secondary daemon when it runs, else under
  the secondary store's lock). First the registry marks the replica
  promoted under a new generation: from then on the daemon refuses the old
  primary (fencing). Then the replica directory gets a primary store's
  state: the group record (its history plus the new generation, stale, and
  ``promoted_from``, the generation the replica held), a dirty set that says
  "everything" (so the first resync goes through the newest common
  snapshot), and the replica's snapshots with what changed since each,
  turned from its record by path into the primary's by inode. The record is
  written last: a crash before it is finished by running promote again.
- **Demote** (``demote``; the old primary's store, not mounted). The store
  is renamed into the secondary store as ``<group-id>`` (no data copied);
  the registry gets its position (its seq, its generations) and its
  snapshots, each with what changed here since it (automatic points folded
  into the taken snapshot before them, intercept logs merged in, and the
  dirty set and, after a crash, the activity log's extents in the newest):
  the record by inode turned into one by path (``tracking.by_path``). Last,
  its ``.fsrep`` is set aside under the secondary store's
  ``.fsrep/demoted/<group-id>/<time>/``. Until then the daemon refuses the
  directory, and running demote again finishes it.

The direction is then unambiguous: the promoted side's history holds the
old primary's last generation and a newer one, and the handshake
(``_verdict``) resyncs the old primary from the common snapshot — its
unreplicated tail (written here, never acknowledged) included. An old
primary that wrote on in a generation of its own is split brain.

Caveats:
- A snapshot whose record cannot be told by path (a change through a name
  that is gone, a dirty set that says "everything") is not kept by demote:
  the resync falls back to an older one, or compares by digest.
- Both commands move state only; neither holds a client's data.
"""

from __future__ import annotations

import errno
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tracking

from . import _replica_snapshots as replica_snapshots
from ._config import META_DIR, ConfigError, GroupRecord, GroupStore
from ._from_snapshot import mark_reported
from ._registry import PROMOTED, REPLICA_KIND, holds_primary_state, position_file, save_position
from ._snapshot_file import SnapshotFile
from ._status import Record
from ._store import StoreLock, check_directory
from ._tree import Tree
from ._undo import UndoLog

log = logging.getLogger(__name__)
PrimaryChain = tracking.SnapshotChain[tracking.DirtySet]


@dataclass(frozen=True, slots=True)
class Promoted(Record):
    """What ``fsrep promote`` did: the store that now holds the group as
    its primary, the new generation, and where it starts."""

    group: str
    store: str
    generation: str  # hex: the promoted side's new generation
    promoted_from: str  # hex: the old primary's generation the replica held ("" for none)
    seq: int
    snapshot: str  # the newest snapshot kept ("" for none): where the resync with the old primary starts
    cut_off: str = ""  # the old primary's session ended by --force
    rolled_back: str = ""  # what the undo log of an unfinished resync undid ("" for nothing)


@dataclass(frozen=True, slots=True)
class Demoted:
    """What ``fsrep demote`` did."""

    group: str
    replica: Path
    seq: int
    snapshots: list[str]
    set_aside: Path
    dropped: str  # why snapshots were not kept ("" when all were)


# --- promote ----------------------------------------------------------------------------


def replica_of(path: str) -> tuple[Path, str]:
    """The secondary store and the group of the replica directory *path*
    (``SECONDARY_STORE/<group-id>``).

    Raises:
        ConfigError: it is not one.
    """
    root = check_directory(path, "replica")
    try:
        gid = str(uuid.UUID(root.name))
    except ValueError:
        raise ConfigError(f"{path} is not a replica directory: give SECONDARY_STORE/<group-id>, the directory "
                          f"'fsrep serve SECONDARY_STORE' keeps the group's replica in") from None
    if gid != root.name or not position_file(root.parent, gid).exists():
        raise ConfigError(f"{path} is not a replica of 'fsrep serve {root.parent}' (it has no "
                          f"{position_file(root.parent, gid)}); give SECONDARY_STORE/<group-id>")
    return root.parent, gid


def promote(store: Path, gid: str) -> Promoted:
    """Make the replica of group *gid* in the secondary store *store* the
    group's primary store. The caller holds the store's lock, or is its
    daemon with the replica closed.

    Raises:
        ConfigError: it cannot (the message says why and what to do).
    """
    registry, root = position_file(store, gid), store / gid
    try:
        state = tracking.load_state(registry, REPLICA_KIND)
        rolled_back = _roll_back(store, gid, state)  # the position is then where the unfinished resync began
        last = int(state["last_seq"])
        history = [bytes.fromhex(g) for g in state.get("generations", [])]
        listed = list(state.get("snapshots", []))
    except (tracking.StateError, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the replica's position ({exc}); promote needs it to know what the "
                          f"replica holds — restore {registry}") from None
    groups = GroupStore(str(root))
    promoted = state.get(PROMOTED)
    if promoted is not None and any(r.id == gid for r in groups.load_all()):
        raise ConfigError(f"group {gid} was promoted already (generation {str(promoted['generation'])[:8]}); "
                          f"mount {root} to serve it")
    if promoted is None and holds_primary_state(root):
        raise ConfigError(f"{root} holds a primary store's state already (a demote that did not finish?); run "
                          f"'fsrep demote {root} --into {store}' first")
    chain = replica_snapshots.SavedChain(registry.with_suffix(".snapshots")).load(listed, last, gid)
    newest = chain.newest
    if promoted is None:
        promoted = {"generation": tracking.generations.new_generation().hex(),
                    "from": history[-1].hex() if history else "", "at": time.time(),
                    "snapshot": newest.name if newest is not None else ""}
        # First of all: from here on the daemon refuses the old primary.
        save_position(registry, gid, last, [g.hex() for g in history], listed, promoted)
    generation = str(promoted["generation"])
    basis = f"snapshot {newest.name} (seq {newest.seq})" if newest is not None else "no common snapshot"
    reason = f"promoted at generation {generation[:8]} from {basis}"
    lock = StoreLock(root, "promote")  # makes .fsrep, keeping the root's mtime the clients'
    try:
        tree = Tree(root)
        try:
            primary_chain = _by_inode(chain, tree)
        finally:
            tree.close()
        record = GroupRecord(id=gid, path="", policy="sync", secondary="", last_seq=last, stale=True,
                             stale_reason=reason, clean_shutdown=True,
                             generations=[g.hex() for g in tracking.generations.extend(history,
                                                                                      bytes.fromhex(generation))],
                             promoted_from=str(promoted["from"]))
        dirty = tracking.DirtySet()
        dirty.mark_everything(f"{reason}: what differs from the old primary is what changed on either side since "
                              f"the newest common snapshot")
        groups.save_dirty(record, dirty)
        _save_chain(groups, record, primary_chain)
        groups.save(record)  # last: a store with a record is a whole one
    finally:
        lock.release()
    log.info("group %s: %s; the replica was at seq %d of generation %s", gid, reason, last,
             str(promoted["from"])[:8] or "none")
    return Promoted(group=gid, store=str(root), generation=generation, promoted_from=str(promoted["from"]),
                    seq=last, snapshot=newest.name if newest is not None else "", rolled_back=rolled_back)


def _roll_back(store: Path, gid: str, state: dict[str, Any]) -> str:
    """Roll the replica back to where an unfinished resync began (its undo
    log), and its position file with it; what was done ("" for nothing).

    Raises:
        ConfigError: the log cannot be read or applied (the replica is
            left for the operator; running promote again retries).
    """
    root, registry = store / gid, position_file(store, gid)
    tree = Tree(root)
    try:
        undo = UndoLog(store / META_DIR / "undo" / gid, tree)
        if not undo.load() or undo.base is None:
            return ""
        if undo.ended is not None and undo.ended <= int(state["last_seq"]):
            undo.release()  # the resync completed, and its data is durable: nothing to undo
            return ""
        records = undo.records
        try:
            base = undo.rollback()
        except (OSError, tracking.StateError) as exc:
            raise ConfigError(f"group {gid}: cannot roll the replica back to where the unfinished resync began "
                              f"({exc}); nothing is promoted — fix that and run promote again") from None
    finally:
        tree.close()
    state.update(last_seq=int(base["last_seq"]), generations=list(base["generations"]),
                 snapshots=list(base["snapshots"]))
    save_position(registry, gid, state["last_seq"], state["generations"], state["snapshots"], state.get(PROMOTED))
    undo.release()
    note = (f"rolled back to seq {state['last_seq']}, where a resync that did not complete began ({records} "
            f"changes undone): the replica is as the primary was then")
    log.warning("group %s: %s", gid, note)
    return note


def _by_inode(chain: replica_snapshots.Chain, tree: Tree) -> PrimaryChain:
    """The replica's chain (changes by path) as the primary's (by backing
    inode of *tree*), marked as a resync from the snapshot compares them."""
    converted: PrimaryChain = tracking.SnapshotChain(tracking.DirtySet)
    for sid in chain:
        dirty = tracking.DirtySet()
        for change in chain.delta(sid.name).walk():
            mark_reported(dirty, tree, change.path, change.flags, [(r.first, r.count) for r in change.runs])
        converted.add(sid, changes=dirty)
    return converted


def _save_chain(groups: GroupStore, record: GroupRecord, chain: PrimaryChain) -> None:
    file = SnapshotFile(groups.dir / f"{record.id}.snapshots", groups)
    job = file.start(chain, record.last_seq)
    if job is not None and (error := file.write(job)) is not None:
        raise error


# --- demote -----------------------------------------------------------------------------


def demote(store_path: str, into: str) -> Demoted:
    """Make the old primary store *store_path* (not mounted) the replica of
    its group in the secondary store *into*.

    Raises:
        ConfigError: it cannot (the message says why and what to do).
    """
    secondary = check_directory(into, "secondary store")
    store = _old_store(store_path, secondary)
    lock = StoreLock(store, "demote")  # a mounted store is refused here
    try:
        records = GroupStore(str(store)).load_all()
        if len(records) != 1:
            raise ConfigError(f"{store} holds {len(records) or 'no'} consistency groups; demote turns a store of "
                              f"one group into its replica" + ("" if records else " (is it an fsrep store?)"))
        record = records[0]
        target = secondary / record.id
        _check_target(store, target, secondary, record.id)
        chain, dropped = _by_path(store, record)
        last = max([record.last_seq, *(sid.seq for sid in chain)])
        if target != store:
            try:
                os.rename(store, target)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise ConfigError(f"{store} and {secondary} are on different file systems; demote renames "
                                      f"the store, it never copies it — give a secondary store on the same file "
                                      f"system") from None
                raise ConfigError(f"cannot move {store} to {target}: {exc.strerror or exc}") from None
        registry = position_file(secondary, record.id)
        registry.parent.mkdir(parents=True, exist_ok=True)
        replica_snapshots.SavedChain(registry.with_suffix(".snapshots")).rewrite(chain)
        save_position(registry, record.id, last, list(record.generations), replica_snapshots.listed(chain))
        aside = secondary / META_DIR / "demoted" / record.id / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside.parent.mkdir(parents=True, exist_ok=True)
        before = os.stat(target).st_mtime_ns
        os.rename(target / META_DIR, aside)
        os.utime(target, ns=(os.stat(target).st_atime_ns, before))  # the root's mtime stays the clients'
    finally:
        lock.release()
    log.info("group %s: demoted %s to the replica %s at seq %d of generation %s; snapshots kept: %s", record.id,
             store, target, last, record.generations[-1][:8] if record.generations else "none",
             ", ".join(sid.name for sid in chain) or "none")
    return Demoted(record.id, target, last, [sid.name for sid in chain], aside, dropped)


def _old_store(path: str, secondary: Path) -> Path:
    """*path* as a directory; when it is gone because a demote into
    *secondary* did not finish, say where it went."""
    try:
        return check_directory(path, "store")
    except ConfigError:
        moved = [p for p in sorted(secondary.iterdir()) if holds_primary_state(p)] if secondary.is_dir() else []
        if moved:
            raise ConfigError(f"store {path} does not exist, and {moved[0]} holds a store a demote did not finish: "
                              f"run 'fsrep demote {moved[0]} --into {secondary}'") from None
        raise


def _check_target(store: Path, target: Path, secondary: Path, gid: str) -> None:
    """Refuse a secondary store that holds the group already (as a replica
    not promoted, or a directory of its name that is not this store)."""
    if target != store and os.path.lexists(target):
        raise ConfigError(f"{target} exists already; move it away first (demote renames {store} there)")
    registry = position_file(secondary, gid)
    try:
        state = tracking.load_state(registry, REPLICA_KIND)
    except tracking.StateMissing:
        return
    except tracking.StateError as exc:
        raise ConfigError(f"{exc}; restore or remove it before demoting group {gid} into {secondary}") from None
    if state.get(PROMOTED) is None and target != store:
        raise ConfigError(f"{secondary} holds group {gid} already as a replica (at seq {state.get('last_seq')}); "
                          f"remove that replica first if this store is to replace it")


def _by_path(store: Path, record: GroupRecord) -> tuple[replica_snapshots.Chain, str]:
    """The store's snapshots as a replica keeps them, each with what changed
    here since it (by path); and why some were dropped ("" if none was)."""
    groups = GroupStore(str(store))
    chain = SnapshotFile(groups.dir / f"{record.id}.snapshots", groups).load(record.id)
    for sid in [s for s in chain if s.auto]:
        chain.retire(sid.name)  # an automatic point is this side's alone: its changes go to the one before
    newest = chain.current()
    dropped = ""
    if newest is not None:
        if record.stale:
            newest.merge(groups.load_dirty(record))
        if not record.clean_shutdown:
            try:
                tracking.ActivityLog.recover(groups.activity(record).load(), newest)
            except (tracking.StateError, ValueError) as exc:
                newest.mark_everything(f"unclean shutdown and no usable activity log: {exc}")
    converted = replica_snapshots.new_chain()
    for sid in chain:
        delta = chain.delta(sid.name)
        intercept = chain.intercept(sid.name)
        if intercept is not None:
            delta.merge(intercept)
        changes = tracking.by_path(delta, lambda path: _names(store, path))
        if changes is None:
            dropped = (f"what changed here since {sid.name} cannot be told by path "
                       f"({delta.reason if delta.everything else 'a change through a name that is gone'})")
            converted = replica_snapshots.new_chain()  # nor since any snapshot before it
            continue
        converted.add(tracking.SnapshotId(sid.name, sid.generation, sid.seq, sid.created), changes=changes)
    return converted, dropped


def _names(store: Path, path: bytes) -> list[bytes]:
    try:
        names = os.listdir(os.path.join(os.fsencode(store), path))
    except OSError:
        return []
    return [name for name in names if path or name != META_DIR.encode()]


def describe(promoted: Promoted) -> list[str]:
    """What promote tells the operator."""
    lines = [f"group {promoted.group}: promoted at generation {promoted.generation[:8]} (the old primary's was "
             f"{promoted.promoted_from[:8] or 'none'}), at seq {promoted.seq}"]
    if promoted.rolled_back:
        lines.append(promoted.rolled_back)
    if promoted.cut_off:
        lines.append(f"cut off the old primary's session ({promoted.cut_off})")
    lines.append(f"resyncs with the old primary start at snapshot {promoted.snapshot}" if promoted.snapshot else
                 "no common snapshot: the first resync with the old primary compares the whole tree by digest")
    lines.append(f"serve it: fsrep mount {promoted.store} MOUNTPOINT --secondary HOST:PORT --key-file KEY")
    return lines
