"""Change tracking and durable state.

Layout: ``_regions`` (region numbers, roaring-bitmap region sets),
``_persist`` (the one atomic, versioned, checksummed way to write state),
``_dirty`` (what may differ, per group), ``_activity`` (the activity log
that makes in-flight changes crash safe), ``_snapshots`` (pseudo
snapshots: common points and what changed since each) and ``generations``
(which side holds the newest data). All sans-IO but ``_persist``.
"""

from . import generations as generations
from ._activity import ACTIVITY_KIND as ACTIVITY_KIND
from ._activity import EXTENT_SIZE as EXTENT_SIZE
from ._activity import LOCAL_SEQ as LOCAL_SEQ
from ._activity import ActivityLog as ActivityLog
from ._dirty import DIRTY_KIND as DIRTY_KIND
from ._dirty import UNNAMED as UNNAMED
from ._dirty import ClonedFrom as ClonedFrom
from ._dirty import DirtySet as DirtySet
from ._dirty import Marks as Marks
from ._persist import AlternatingState as AlternatingState
from ._persist import JournaledState as JournaledState
from ._persist import StateCorrupt as StateCorrupt
from ._persist import StateError as StateError
from ._persist import StateMissing as StateMissing
from ._persist import atomic_write as atomic_write
from ._persist import fsync_directory as fsync_directory
from ._persist import load_state as load_state
from ._persist import save_state as save_state
from ._regions import REGION_SIZE as REGION_SIZE
from ._regions import RegionOverflow as RegionOverflow
from ._regions import RegionRange as RegionRange
from ._regions import RegionSet as RegionSet
from ._regions import region_digests as region_digests
from ._regions import regions_for as regions_for
from ._snapshots import AUTO_PREFIX as AUTO_PREFIX
from ._snapshots import DIR as DIR
from ._snapshots import MAX_RUNS_PER_CHANGE as MAX_RUNS_PER_CHANGE
from ._snapshots import MAX_SNAPSHOTS as MAX_SNAPSHOTS
from ._snapshots import META as META
from ._snapshots import SNAPSHOTS_KIND as SNAPSHOTS_KIND
from ._snapshots import WHOLE as WHOLE
from ._snapshots import PathChange as PathChange
from ._snapshots import PathChanges as PathChanges
from ._snapshots import SnapshotChain as SnapshotChain
from ._snapshots import SnapshotError as SnapshotError
from ._snapshots import SnapshotId as SnapshotId
from ._snapshots import Taking as Taking
from ._snapshots import by_path as by_path
from ._snapshots import check_name as check_name
from .generations import Verdict as Verdict
