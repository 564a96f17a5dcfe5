"""The one call each mutation makes before it is applied: ``Recorder.record``
feeds every tracker that must know what the change touches.

Today that is the activity log (made durable before the change reaches an
extent not already active, so a crash of this daemon can name what may
differ). The intercept log and the changed-since-snapshot set of pseudo
snapshots, and the undo log of failback, are further trackers added to the
list — not further calls in the write path.

A tracker that cannot record refuses the change: it raises OSError, and
the caller sees EIO before anything was applied.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import tracking

from ._config import GroupStore
from ._faults import Faults


class Tracker(Protocol):
    def record(self, marks: tracking.Marks, seq: int) -> None:
        """Know that the change *marks* describe is about to be applied
        under *seq* (``tracking.LOCAL_SEQ`` when it is kept local).

        Raises:
            OSError: it cannot be recorded; the change must not be made.
        """


class Recorder:
    """Every tracker of one group, fed in order."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        self.trackers = list(trackers)

    def record(self, marks: tracking.Marks, seq: int) -> None:
        if marks:
            for tracker in self.trackers:
                tracker.record(marks, seq)


class ActivityTracker:
    """The activity log of one group, saved before a change makes an
    extent active."""

    def __init__(self, group: str, groups: GroupStore, file: tracking.AlternatingState, faults: Faults,
                 durable_seq: Callable[[], int]) -> None:
        self.log = tracking.ActivityLog()
        self._group = group
        self._groups = groups
        self._file = file
        self._faults = faults
        self._durable_seq = durable_seq

    def record(self, marks: tracking.Marks, seq: int) -> None:
        if not self.log.touch(marks, seq, self._durable_seq()):
            return
        payload = self.log.payload()
        try:
            self._groups.durably(lambda: self._file.save(payload))
        except OSError as exc:
            self.log.save_failed()
            self._faults.say("activity", f"cannot save the activity log ({exc}); changes are refused until it "
                                         f"can be saved")
            raise OSError(exc.errno or errno.EIO, f"group {self._group}: cannot record the change in the "
                                                  f"activity log: {exc.strerror or exc}") from None
        self._faults.clear("activity", "the activity log is saved again; changes are accepted")

    def rekey(self, inodes: Mapping[int, int]) -> bool:
        """The group's data was copied to another file system: the active
        extents under the inode numbers there, saved now (else before the
        next change); whether they are on disk."""
        self.log.rekey(inodes)
        payload = self.log.payload()
        try:
            self._groups.durably(lambda: self._file.save(payload))
        except OSError:
            return False  # still unsaved: the next change saves it first, or is refused
        self.log.saved()
        return True

    def settle(self) -> None:
        """The dirty set was saved: extents idle since may be let go."""
        self.log.settle()
