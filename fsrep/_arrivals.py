"""The receiving end of ``fsrep-move --to-primary``: a running mount takes
a consistency group over from another primary.

How this works: ``fsrep mount ... --accept-moves HOST:PORT`` listens
there for old primaries (authenticated with the mount's key) and keeps
the group each one sends as a replica (a ``Secondary`` of its own) under
the store's ``.fsrep/incoming/<group-id>``: the old primary's copy and
its catch-up passes are resync streams to it (``_move_primary``). Two
Adopt frames of that stream are answered here, in stream order:

- ask: could the group come to its path here? (``check``: a free path
  of the default group, whose parent exists; a group this store does not
  know.) The copy as it stands is made durable before the answer: asked
  again just before the cutover, this leaves the take little to flush.
- take: the copy now equals the group as the old primary and the group's
  secondary hold it at a common snapshot (the old primary holds its
  clients' changes meanwhile). The group's record is written — the old
  primary's history and position and a new generation, phase "arriving"
  — the copy is renamed to its path in the store, the record's phase
  cleared, and the group added to the running mount, its clients'
  changes held. Its relationship with the group's secondary starts when
  the old primary's session here ends: the old primary ends its own
  session with the secondary first (the replica takes one session at a
  time), and the changes held go on once the first attempt to reach the
  secondary ended — replicated, not kept local, when it got in. The
  handshake then finds
  the replica where the record says (InSync, the new generation told),
  and the common snapshot is the first of the group's chain here.

An incoming copy whose session ends without a take is removed: a move cut
short is not resumed (the old primary aborts it when the link goes).

Crash safety: the record is written before the rename, with where the
copy is (``settle``, at the next mount, makes the rename if it was not
made); every other incoming copy is removed at mount. Later mounts serve
the group by its record (``arrived_from``), declared or not.

Caveats:
- The listener takes the pre-shared key only (no TLS).
- A group cannot arrive inside another group, nor at a path where this
  store keeps anything (an old copy of the same group included: retire it
  first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

import tracking
import transport as tp

from ._config import META_DIR, ConfigError, GroupRecord, GroupStore, parse_address
from ._groups import Group, Groups
from ._tree import RESERVED, Tree

if TYPE_CHECKING:
    from ._secondary import Replica, Secondary

log = logging.getLogger(__name__)
INCOMING = "incoming"
POLICIES = ("sync", "strict", "semi-sync", "async")


class Refused(Exception):
    """The group cannot come here; the message is one line for the old
    primary's operator (nothing here was changed)."""


def incoming_dir(store: Path) -> Path:
    return store / META_DIR / INCOMING


def settle(store: Path, record: GroupRecord) -> bool:
    """Finish an arrival a crash cut short after its record was written:
    the copy renamed to the group's path, if it was not yet. Whether
    *record* changed (the caller saves it)."""
    if record.moving_phase != "arriving":
        return False
    copy, place = Path(record.moving_from), store / record.path
    if os.path.lexists(copy) and not os.path.lexists(place):
        os.rename(copy, place)
        tracking.fsync_directory(place.parent)
    log.warning("group %s: its arrival from %s was cut short after its record was written; it is served from %s",
                record.id, record.arrived_from, place)
    record.moving_phase = record.moving_from = ""
    return True


def parse_state(blob: bytes) -> dict[str, Any]:
    """The group's state an Adopt carries, checked field by field.

    Raises:
        Refused: it is not one (a malformed frame from the peer).
    """
    try:
        state = json.loads(blob)
        path = state["path"]
        snapshot = state["snapshot"]
        checked = {
            "path": path if isinstance(path, str) and path else None,
            "policy": state["policy"] if state["policy"] in POLICIES else None,
            "secondary": state["secondary"] if isinstance(state["secondary"], str) else None,
            "last_seq": state["last_seq"] if isinstance(state["last_seq"], int) and state["last_seq"] >= 0 else None,
            "generations": [bytes.fromhex(g).hex() for g in state["generations"]],
            "snapshot": tracking.SnapshotId(tracking.check_name(snapshot["name"]), bytes.fromhex(
                snapshot["generation"]).hex(), int(snapshot["seq"]), float(snapshot["created"])),
        }
        if None in checked.values() or not checked["generations"]:
            raise ValueError("a field is missing or of the wrong kind")
        parse_address(str(checked["secondary"]), what="the group's secondary")
        tp.check_path(os.fsencode(path))
    except (ValueError, KeyError, TypeError, AttributeError, tracking.SnapshotError, ConfigError,
            tp.ProtocolError, OSError) as exc:
        raise Refused(f"the group's state in the Adopt frame is malformed ({exc})") from None
    return checked


class Arrivals:
    """A mount's incoming moves: the listener's replicas, the answers to
    Adopt, and the groups taken over, until their relationship starts."""

    def __init__(self, store: Path, groups: GroupStore, mount: Groups, mount_tree: Tree,
                 new_group: Callable[[GroupRecord], Group],
                 start: Callable[[Group, Callable[[], object]], None]) -> None:
        self.store = store
        self.dir = incoming_dir(store)
        self._groups = groups
        self._mount = mount
        self._mount_tree = mount_tree
        self._new_group = new_group  # a group of the mount for a record (its tree and relationship), not yet served
        # Serve a group added to the mount: its relationship's link and resyncs; the callable it is given lets
        # clients' changes in once the first attempt to reach the secondary ended.
        self._start = start
        # By id: taken over, its clients' changes held, waiting for the old primary's session to end.
        self._taken: dict[str, tuple[Group, contextlib.AbstractContextManager[None]]] = {}

    def clear(self) -> None:
        """At mount: incoming copies of moves that never arrived go."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)

    # --- the answers -------------------------------------------------------------------

    def check(self, gid: str, path: str) -> None:
        """Whether group *gid* could come to *path* of this mount.

        Raises:
            Refused: it could not (why, and what to do).
        """
        raw = os.fsencode(path)
        if any(part == RESERVED for part in raw.split(b"/")):
            raise Refused(f"/{path}: {RESERVED.decode()} is reserved for fsrep's state")
        for group in self._mount.all:
            if group.rel.record.id == gid:
                raise Refused(f"group {gid} is served by the primary here already (at /{group.rel.record.path})")
        for record in self._groups.load_all():
            if record.id == gid:
                raise Refused(f"the store here keeps an old copy of group {gid} at /{record.path} (moved to "
                              f"{record.moved_to or 'elsewhere'}); retire it there first (mount with --retire "
                              f"/{record.path})")
        group, _ = self._mount.route(raw)
        if group is not self._mount.default or self._mount.pinned(raw):
            raise Refused(f"/{path} lies in group /{group.rel.record.path} of the primary here: a group arrives "
                          f"in the default group only")
        parent = raw.rpartition(b"/")[0]
        try:
            st = self._mount_tree.lstat(parent)
        except OSError as exc:
            raise Refused(f"/{parent.decode(errors='replace')} cannot be used on the primary here "
                          f"({exc.strerror or exc}); make that directory there first") from None
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"/{parent.decode(errors='replace')} is not a directory on the primary here")
        try:
            self._mount_tree.lstat(raw)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise Refused(f"/{path} cannot be used on the primary here ({exc.strerror or exc})") from None
        raise Refused(f"/{path} exists on the primary here; remove it there, or move the group elsewhere")

    def taken(self, replica: Replica) -> bool:
        """Whether *replica*'s group was taken over: its session may only end."""
        return replica.id in self._taken

    async def answer(self, secondary: Secondary, replica: Replica, op: tp.Adopt, peer: str) -> tp.Adopted:
        """The answer to *op* (for a take, once the group is taken over)."""
        try:
            state = parse_state(op.state)
            self.check(replica.id, state["path"])
            await self._durable(replica)  # an ask just before the cutover leaves the take little to flush
            if op.take == tp.ADOPT_TAKE:
                await self._take(secondary, replica, state, peer)
        except Refused as exc:
            log.warning("group %s: refusing the move from %s: %s", replica.id, peer, exc)
            return tp.Adopted(seq=op.seq, ok=0, message=str(exc)[:500])
        return tp.Adopted(seq=op.seq, ok=1)

    async def _take(self, secondary: Secondary, replica: Replica, state: dict[str, Any], peer: str) -> None:
        """Take the group over: its record, its data in place, the mount
        serving it (see the module docstring).

        Raises:
            Refused: it could not be done (what was done is undone).
        """
        gid, path = replica.id, state["path"]
        copy, place = Path(replica.tree.root), self.store / path
        # From here to the end, one step of the event loop: no client's change comes between the check and the rename.
        self.check(gid, path)
        record = GroupRecord(id=gid, path=path, policy=state["policy"], secondary=state["secondary"],
                             last_seq=state["last_seq"], generations=state["generations"], arrived_from=peer,
                             moving_phase="arriving", moving_from=str(copy))
        record.new_generation()  # the old primary is fenced from the replica by it
        try:
            self._groups.save(record)
        except OSError as exc:
            raise Refused(f"the group's record cannot be written here ({exc.strerror or exc})") from None
        try:
            parent, name = self._mount_tree.at(os.fsencode(path))  # never through a symlink
            os.rename(copy, name, dst_dir_fd=parent)
            tracking.fsync_directory(place.parent)
        except OSError as exc:
            self._groups.remove(record)
            raise Refused(f"the copy cannot be moved to /{path} here ({exc.strerror or exc})") from None
        with replica.lock:  # nothing of the incoming replica is saved or applied after this
            replica.replaced = True
            replica.tree.close()
        secondary.replicas.pop(gid, None)
        for left in secondary.registry.glob(f"{gid}.*"):
            left.unlink(missing_ok=True)
        record.moving_phase = record.moving_from = ""
        record.clean_shutdown = False
        group = self._new_group(record)
        group.rel.snapshots.chain.add(state["snapshot"])
        group.rel.snapshots.file.reshaped = True
        group.rel.snapshots.save()
        self._groups.save(record)
        holding = group.rel.stream.holding_mutations()  # clients' changes wait for the link (see ``ended``)
        holding.__enter__()
        self._mount.add(group)
        self._taken[gid] = (group, holding)
        log.info("group %s (/%s): taken over from the primary at %s at seq %d, common snapshot %s; its "
                 "relationship with %s starts once that primary has let the replica go", gid, path, peer,
                 record.last_seq, state["snapshot"].name, record.secondary)

    @staticmethod
    async def _durable(replica: Replica) -> None:
        """Make the copy durable as it stands.

        Raises:
            Refused: it cannot be.
        """
        try:
            await replica.checkpoint_in_thread()
            await trio.to_thread.run_sync(replica.tree.sync)
        except OSError as exc:
            raise Refused(f"the copy here cannot be made durable ({exc.strerror or exc})") from None

    def ended(self, secondary: Secondary, replica: Replica) -> None:
        """A session of the listener ended: a group taken over starts its
        relationship (the old primary has let the replica go, or is gone);
        a copy never taken goes. Never checkpoints."""
        taken = self._taken.pop(replica.id, None)
        if taken is not None:
            group, holding = taken
            log.info("group %s: the old primary's session ended; connecting to %s", replica.id,
                     group.rel.record.secondary)
            self._start(group, lambda: holding.__exit__(None, None, None))
            return
        if secondary.replicas.get(replica.id) is not replica:
            return  # a newer session holds it
        with replica.lock:
            replica.replaced = True
            replica.tree.close()
        del secondary.replicas[replica.id]
        for left in secondary.registry.glob(f"{replica.id}.*"):
            left.unlink(missing_ok=True)
        aside = self.dir / f".gone-{uuid.uuid4().hex}"
        try:
            os.rename(replica.tree.root, aside)
        except OSError as exc:
            log.warning("group %s: cannot remove the copy of a move that did not arrive (%s); remove %s by hand",
                        replica.id, exc.strerror or exc, replica.tree.root)
            return
        log.info("group %s: the move from its primary ended before it arrived; its copy here is removed",
                 replica.id)
        trio.lowlevel.spawn_system_task(trio.to_thread.run_sync, _remove, aside)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
