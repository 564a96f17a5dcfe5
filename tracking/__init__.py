"""Change tracking and durable state.

Layout: ``_regions`` (region numbers, roaring-bitmap region sets),
``_persist`` (the one atomic, versioned, checksummed way to write state),
``_dirty`` (what may differ, per group), ``_activity`` (the activity log
that makes in-flight changes crash safe) and ``generations`` (which side
holds the newest data). All sans-IO but ``_persist``.
"""

from . import generations as generations
from ._activity import ACTIVITY_KIND as ACTIVITY_KIND
from ._activity import EXTENT_SIZE as EXTENT_SIZE
from ._activity import LOCAL_SEQ as LOCAL_SEQ
from ._activity import ActivityLog as ActivityLog
from ._dirty import DIRTY_KIND as DIRTY_KIND
from ._dirty import UNNAMED as UNNAMED
from ._dirty import DirtySet as DirtySet
from ._dirty import Marks as Marks
from ._persist import AlternatingState as AlternatingState
from ._persist import StateCorrupt as StateCorrupt
from ._persist import StateError as StateError
from ._persist import StateMissing as StateMissing
from ._persist import atomic_write as atomic_write
from ._persist import load_state as load_state
from ._persist import save_state as save_state
from ._regions import REGION_SIZE as REGION_SIZE
from ._regions import RegionOverflow as RegionOverflow
from ._regions import RegionRange as RegionRange
from ._regions import RegionSet as RegionSet
from ._regions import region_digests as region_digests
from ._regions import regions_for as regions_for
from .generations import Verdict as Verdict
