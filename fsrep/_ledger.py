"""What one group keeps on disk so that a crash never loses track of what
the replica lacks: the stale mark (written before the first change kept
local), the dirty set, and the record of the replica meeting the primary
again.

A save that fails is a standing fault (``Faults``, shown in status): a
stale mark that cannot be saved refuses every change kept local until it
can be; a dirty set that cannot be saved is retried, and meanwhile the
activity log, which settles only after a save, still names what changed.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable

import trio

import tracking

from ._config import GroupRecord, GroupStore
from ._faults import Faults

log = logging.getLogger(__name__)
DIRTY_SAVE_INTERVAL = 1.0
DIRTY_SAVE_SHARE = 20  # the periodic save waits this many times as long as the last one took


class Ledger:
    """The durable state of one group's tracking."""

    def __init__(self, record: GroupRecord, groups: GroupStore, faults: Faults,
                 unsettled: Callable[[], list[tracking.Marks]], settled: Callable[[], None], *,
                 saved_with: Callable[[], bool] = lambda: True,
                 leaving: Callable[[str, int], None] = lambda generation, seq: None) -> None:
        self.record = record
        self.groups = groups
        self._faults = faults
        self._unsettled = unsettled  # marks a crash of this daemon would leave unknown (in flight, not durable)
        self._settled = settled  # called after each dirty-set save: the activity log may let go of extents
        self._saved_with = saved_with  # state saved with the dirty set (the snapshots): whether it is on disk
        self._leaving = leaving  # the replica stops being current at (generation, seq): the automatic point
        self.dirty = tracking.DirtySet()
        self.dirty_changed = False
        self._stale_unsaved = False

    # --- the stale mark ------------------------------------------------------------

    def mark_stale(self, reason: str, acked_seq: int) -> None:
        """Durably record that the replica may lack changes after
        *acked_seq*. Written before any unreplicated change is applied
        locally; when it cannot be saved, such changes are refused (see
        ``stale_durable``)."""
        if self.record.stale:
            return
        self._leaving(self.record.generations[-1], acked_seq)
        self.record.stale = True
        self.record.stale_reason = reason
        self.record.last_seq = acked_seq
        self.record.new_generation()  # our data moves ahead of the replica's
        self.restate(reason)

    def restate(self, reason: str) -> None:
        """The replica is stale for another *reason* (a refused handshake):
        saved like a new mark."""
        self.record.stale_reason = reason
        self._stale_unsaved = True
        try:
            self.stale_durable()
        except OSError:
            pass  # a standing fault; every change kept local is refused until the mark is saved

    def stale_durable(self) -> None:
        """Make sure the stale mark is on disk (retried while it is not).

        Raises:
            OSError: it cannot be saved (a full disk): the caller must not
                make a change the replica will lack.
        """
        if not self._stale_unsaved:
            return
        try:
            self.groups.save(self.record)
        except OSError as exc:
            self._faults.say("stale", f"cannot record that the replica is stale ({exc}); changes that cannot be "
                                      f"replicated are refused until it can be saved")
            raise OSError(exc.errno or errno.EIO, f"group {self.record.id}: cannot record durably that the "
                                                  f"replica is stale: {exc.strerror or exc}") from None
        self._stale_unsaved = False
        self._faults.clear("stale", "the stale mark is saved; changes are accepted again")

    def replica_matches(self, acked_seq: int) -> bytes:
        """The replica holds everything up to *acked_seq* and nothing is
        dirty: clear the stale mark durably under a new generation (both
        sides meet again), which is returned.

        Raises:
            OSError: the record cannot be saved; nothing changed.
        """
        before = (self.record.stale_reason, self.record.last_seq, list(self.record.generations))
        self.record.stale = False
        self.record.stale_reason = ""
        self.record.last_seq = acked_seq
        generation = self.record.new_generation()
        try:
            self.groups.save(self.record)
        except OSError:
            self.record.stale = True
            self.record.stale_reason, self.record.last_seq, self.record.generations = before
            raise
        self._stale_unsaved = False
        self.groups.reserve()  # given up when the disk was full, perhaps
        return generation

    # --- the dirty set -----------------------------------------------------------------

    def dirty_apply(self, marks: tracking.Marks) -> None:
        self.dirty.apply(marks)
        self.dirty_changed = True

    def mark_everything(self, reason: str) -> None:
        self.dirty.mark_everything(reason)
        self.dirty_changed = True

    def replace_dirty(self, dirty: tracking.DirtySet) -> None:
        """A full resync left the replica matching: start from *dirty*."""
        self.dirty = dirty
        self.dirty_changed = True

    def _to_save(self) -> tracking.DirtySet:
        """The dirty set plus what frames not yet durable on the secondary
        would leave dirty: after a crash of this daemon, their fate is
        unknown. (Client changes in flight are in the activity log.)"""
        pending = self._unsettled()
        if not pending:
            return self.dirty
        saved = tracking.DirtySet.from_payload(self.dirty.to_payload())
        for marks in pending:
            saved.apply(marks)
        return saved

    def save_dirty(self) -> bool:
        """Persist the dirty set (atomically) if it changed, and what is
        saved with it. Returns whether what is on disk is current; only
        then may the activity log let go of what it holds for them."""
        saved = self._save_dirty_set()
        saved = self._saved_with() and saved
        if saved:
            self._settled()
        return saved

    def _save_dirty_set(self) -> bool:
        if not self.dirty_changed:
            return True
        try:
            self.groups.save_dirty(self.record, self._to_save())
        except OSError as exc:
            self._faults.say("dirty", f"cannot save the dirty set ({exc}); retrying every second, and the "
                                      f"activity log keeps what changed meanwhile")
            return False
        self.dirty_changed = False
        self._faults.clear("dirty", "the dirty set is saved again")
        return True

    async def save_periodically(self) -> None:
        """Save the dirty set about once a second — less often when it is
        large, so that saving (the whole set, each time) never takes more
        than 1/DIRTY_SAVE_SHARE of the time: a resync of a tree of many
        directories would otherwise spend its time saving. What is not
        saved yet is covered by the activity log, which settles only
        after a save."""
        took = 0.0
        while True:
            await trio.sleep(max(DIRTY_SAVE_INTERVAL, took * DIRTY_SAVE_SHARE))
            started = time.perf_counter()
            self.save_dirty()
            took = time.perf_counter() - started

    def shut_down(self, acked_seq: int) -> bool:
        """Persist the group as cleanly shut down at *acked_seq*. Returns
        False (said in the log) when that cannot be saved: the next mount
        treats it as a crash."""
        self.record.last_seq = acked_seq
        self.record.clean_shutdown = True
        self.dirty_changed = True
        if not self.save_dirty():
            self.record.clean_shutdown = False  # the next mount falls back on the activity log
        try:
            self.groups.save(self.record)
        except OSError as exc:
            log.error("group %s: cannot save the group's state at shutdown (%s); the next mount treats it as "
                      "a crash and resyncs what the activity log names", self.record.id, exc)
            return False
        return True
