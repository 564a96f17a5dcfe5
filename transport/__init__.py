"""Replication transport.

Layout: ``_frames`` (one frozen dataclass per frame type), ``_codec``
(bytes <-> frames), ``_session`` (handshake, authentication and ordering as
a state table), ``_auth`` (HMAC challenge-response) — all sans-IO — and
``_streams``, the thin trio glue, with ``_tls`` for the SSL contexts
under it. Others import from here only.
"""

from ._codec import FrameDecoder as FrameDecoder
from ._codec import encode as encode
from ._errors import AuthenticationError as AuthenticationError
from ._errors import InvalidPath as InvalidPath
from ._errors import LinkDown as LinkDown
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import TLSFileError as TLSFileError
from ._frames import ATTR_GID as ATTR_GID
from ._frames import ATTR_MODE as ATTR_MODE
from ._frames import ATTR_MTIME as ATTR_MTIME
from ._frames import ATTR_SIZE as ATTR_SIZE
from ._frames import ATTR_TIMES as ATTR_TIMES
from ._frames import ATTR_UID as ATTR_UID
from ._frames import CHANGE_DIR as CHANGE_DIR
from ._frames import CHANGE_META as CHANGE_META
from ._frames import CHANGE_WHOLE as CHANGE_WHOLE
from ._frames import DIGEST_SIZE as DIGEST_SIZE
from ._frames import MAX_CHANGES as MAX_CHANGES
from ._frames import MAX_CHECKSUM_REGIONS as MAX_CHECKSUM_REGIONS
from ._frames import MAX_DATA as MAX_DATA
from ._frames import MAX_LISTING as MAX_LISTING
from ._frames import MAX_PATH as MAX_PATH
from ._frames import MAX_RUNS as MAX_RUNS
from ._frames import NO_TIME as NO_TIME
from ._frames import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._frames import RENAME_EXCHANGE as RENAME_EXCHANGE
from ._frames import RENAME_NOREPLACE as RENAME_NOREPLACE
from ._frames import Ack as Ack
from ._frames import Changes as Changes
from ._frames import Checksum as Checksum
from ._frames import Close as Close
from ._frames import Create as Create
from ._frames import DataMap as DataMap
from ._frames import Digests as Digests
from ._frames import DirEntry as DirEntry
from ._frames import Durable as Durable
from ._frames import Error as Error
from ._frames import Frame as Frame
from ._frames import Fsync as Fsync
from ._frames import Generation as Generation
from ._frames import Hello as Hello
from ._frames import KeepDivergent as KeepDivergent
from ._frames import KeepXattrs as KeepXattrs
from ._frames import Kept as Kept
from ._frames import Link as Link
from ._frames import ListData as ListData
from ._frames import ListDir as ListDir
from ._frames import Listing as Listing
from ._frames import MkDir as MkDir
from ._frames import MkNod as MkNod
from ._frames import Nack as Nack
from ._frames import Operation as Operation
from ._frames import Ping as Ping
from ._frames import Pong as Pong
from ._frames import Punch as Punch
from ._frames import Purge as Purge
from ._frames import Remove as Remove
from ._frames import RemoveXattr as RemoveXattr
from ._frames import Rename as Rename
from ._frames import ResyncBegin as ResyncBegin
from ._frames import RetireSnapshot as RetireSnapshot
from ._frames import RmDir as RmDir
from ._frames import SetAttr as SetAttr
from ._frames import SetXattr as SetXattr
from ._frames import Snapshot as Snapshot
from ._frames import SnapshotChanges as SnapshotChanges
from ._frames import Symlink as Symlink
from ._frames import Unlink as Unlink
from ._frames import Welcome as Welcome
from ._frames import Write as Write
from ._frames import WriteRuns as WriteRuns
from ._frames import check_path as check_path
from ._frames import decode_entries as decode_entries
from ._frames import encode_changes as encode_changes
from ._frames import encode_entries as encode_entries
from ._frames import pack_runs as pack_runs
from ._frames import pack_snapshots as pack_snapshots
from ._session import PrimarySession as PrimarySession
from ._session import SecondarySession as SecondarySession
from ._session import SessionState as SessionState
from ._streams import Connection as Connection
from ._streams import accept_secondary_session as accept_secondary_session
from ._streams import open_primary_connection as open_primary_connection
from ._tls import TLSFiles as TLSFiles
from ._tls import client_context as client_context
from ._tls import server_context as server_context
