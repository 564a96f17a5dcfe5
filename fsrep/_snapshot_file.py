"""Where the primary keeps a group's pseudo snapshots: a base written whole
when the chain is reshaped (a snapshot added or retired) or the journal
outgrew it, and otherwise a journal record of what was recorded since the
last save (``tracking.JournaledState``) — so a save costs what changed, not
the size of a long-lived snapshot's record.

A save is a ``Job``: made in the event loop (a consistent picture of what
to write, taken in one step), written anywhere (``write``, in a worker
thread when the caller can wait), then finished in the event loop. One
job at a time: while one is being written, ``start`` returns None and the
next turn saves what came meanwhile. A job that fails gives its changes
back, so the next one writes them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tracking

if TYPE_CHECKING:
    from ._config import GroupStore

log = logging.getLogger(__name__)
Chain = tracking.SnapshotChain[tracking.DirtySet]


@dataclass(slots=True)
class Job:
    """One save: the whole chain's payload, or one journal record."""

    whole: dict[str, Any] | None
    record: dict[str, Any] | None
    unsaved: tracking.DirtySet  # what the record holds: given back if the save fails
    upto: int  # every replicated change up to this seq is in it


class SnapshotFile:
    """The saved chain of one group."""

    def __init__(self, path: Path, groups: GroupStore) -> None:
        self.path = path
        self._groups = groups
        self._file = tracking.JournaledState(path, tracking.SNAPSHOTS_KIND)
        self.unsaved = tracking.DirtySet()  # recorded in the newest delta since the last save
        self.reshaped = True  # snapshots added or retired since the last save
        self.writing = False
        self.saved_seq = 0

    def load(self, group: str) -> Chain:
        """The saved chain: the base and what the journal added since. A
        file that cannot be read is set aside (one warning): no snapshots."""
        try:
            payload, records = self._file.load()
            chain = tracking.SnapshotChain.from_payload(payload, tracking.DirtySet, tracking.DirtySet.from_payload)
            for record in records:  # what was saved since the base, in order
                chain.delta(str(record["snapshot"])).merge(tracking.DirtySet.from_payload(record["changes"]))
            chain.changed = self.reshaped = False
            return chain
        except tracking.StateMissing:
            pass
        except (tracking.StateError, ValueError, KeyError, TypeError) as exc:
            log.warning("group %s: the snapshots file is unusable (%s); it is set aside as %s.bad, and the group has "
                        "no common snapshot until the next one is taken (a resync that needs one compares by digest)",
                        group, exc, self.path.name)
            self.path.replace(self.path.with_name(self.path.name + ".bad"))
            self._file.journal.unlink(missing_ok=True)
        return tracking.SnapshotChain(tracking.DirtySet)

    def start(self, chain: Chain, recorded_seq: int) -> Job | None:
        """What to write now; None when nothing changed or a save is under way."""
        if not chain.changed or self.writing:
            return None
        newest = chain.newest
        if self.reshaped or newest is None or self._file.outgrown:
            job = Job(chain.to_payload(), None, self.unsaved, recorded_seq)
        else:
            job = Job(None, {"snapshot": newest.name, "changes": self.unsaved.to_payload()}, self.unsaved,
                      recorded_seq)
        chain.changed = self.reshaped = False
        self.unsaved = tracking.DirtySet()
        self.writing = True
        return job

    def write(self, job: Job) -> OSError | None:
        """Write *job* durably (from any thread); the error, if it failed."""
        whole, record = job.whole, job.record
        try:
            if whole is not None:
                self._groups.durably(lambda: self._file.rewrite(whole))
            else:
                assert record is not None
                self._groups.durably(lambda: self._file.append(record))
        except OSError as exc:
            return exc
        return None

    def finish(self, chain: Chain, job: Job, error: OSError | None) -> bool:
        """The job was written (or failed with *error*): whether what is on
        disk is current as of the job."""
        self.writing = False
        if error is not None:
            chain.changed = True
            self.reshaped = True  # never an append after a failed one (see JournaledState.append)
            job.unsaved.merge(self.unsaved)  # what came meanwhile, after what the job held
            self.unsaved = job.unsaved
            return False
        self.saved_seq = job.upto
        return True
