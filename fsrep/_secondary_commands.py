"""The commands the secondary daemon answers on its control socket
(``STORE/.fsrep/control.sock``), in one table read the way the primary's
is (``_commands``): ``fsrep promote`` tells a running daemon to stop
applying a group and make its replica the group's primary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from uuid import UUID

from ._commands import BadRequest, Command, Refused, Request, shown
from ._config import ConfigError
from ._failover import Promoted
from ._status import Record

if TYPE_CHECKING:
    from ._secondary import Secondary

PROMOTE_TIMEOUT = 60.0  # a session to end, a checkpoint, and the promoted state written


@dataclass(frozen=True, slots=True)
class PromoteRequest(Request[Promoted]):
    """Promote the replica of group *group* (its id). Refused while its
    primary is connected and alive, unless *force* (which cuts it off)."""

    command: ClassVar[str] = "promote"
    reply: ClassVar[type[Record]] = Promoted
    group: str
    force: bool = False

    def __post_init__(self) -> None:
        try:
            UUID(self.group)
        except ValueError:
            raise BadRequest(f"promote: group must be a group id, not {shown(self.group)}") from None


async def promote(secondary: Secondary, req: PromoteRequest) -> Promoted:
    try:
        return await secondary.promote(str(UUID(req.group)), force=req.force)
    except ConfigError as exc:
        raise Refused(str(exc)) from None


SECONDARY_COMMANDS: dict[str, Command[Any]] = {row.request.command: row for row in (
    Command(PromoteRequest, promote),
)}
