"""fsrep: the daemons, the FUSE operations, the splitter, the control socket
and the command line.

Layout: ``_primary`` and ``_secondary`` (the two daemons), ``_ops`` (FUSE
operations) over ``_splitter`` (a group's relationship with its secondary),
``_resync`` and ``_fullsync`` (bringing a replica back), ``_tree`` (the
store on disk), ``_control`` (the control socket), ``_commands`` (its
requests and the table of their handlers), ``_status`` (the status
records), ``_cli`` (``fsrep``). What tools may use is re-exported here: the
control client, its requests and replies, and the command-line helpers
every fsrep command shares. Importing it loads no FUSE binding.
"""

from ._args import RATE_LIMIT as RATE_LIMIT
from ._args import Parser as Parser
from ._args import snapshot_name as snapshot_name
from ._commands import BadRequest as BadRequest
from ._commands import MoveAbortRequest as MoveAbortRequest
from ._commands import Moved as Moved
from ._commands import MoveRequest as MoveRequest
from ._commands import Request as Request
from ._commands import ResyncRequest as ResyncRequest
from ._commands import ResyncStarted as ResyncStarted
from ._commands import SnapshotCreateRequest as SnapshotCreateRequest
from ._commands import SnapshotDeleteRequest as SnapshotDeleteRequest
from ._commands import SnapshotListRequest as SnapshotListRequest
from ._commands import SnapshotTaken as SnapshotTaken
from ._commands import StatusRequest as StatusRequest
from ._control import ControlError as ControlError
from ._control import DaemonGone as DaemonGone
from ._control import call as call
from ._control import daemon_for as daemon_for
from ._control import request as request
from ._progress import MODES as MODES
from ._status import DaemonStatus as DaemonStatus
from ._status import EndedRun as EndedRun
from ._status import GroupStatus as GroupStatus
from ._status import MoveProgress as MoveProgress
from ._status import QueuedRun as QueuedRun
from ._status import ResyncProgress as ResyncProgress
from ._status import SnapshotList as SnapshotList
from ._status import SnapshotStatus as SnapshotStatus
