"""Change tracking and durable state.

Layout: ``_regions`` (region numbers, roaring-bitmap region sets) and
``_persist`` (the one atomic, versioned, checksummed way to write state).
Dirty sets, the activity log and pseudo snapshots build on these.
"""

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
from ._regions import regions_for as regions_for
