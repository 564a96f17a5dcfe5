"""Failures a group lives with until they clear — a state file that cannot
be saved, a full disk — said once in the log and shown in ``fsrep status``
with their reason until they clear, never only logged."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class Faults:
    """The standing failures of one group, by what failed."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._standing: dict[str, str] = {}

    def say(self, what: str, message: str) -> None:
        """Record that *what* fails; logged the first time only, not once
        per refused change."""
        if what not in self._standing:
            log.error("group %s: %s", self.group, message)
        self._standing[what] = message

    def clear(self, what: str, message: str = "") -> None:
        """*what* works again (said in the log when *message* is given)."""
        if self._standing.pop(what, None) is not None and message:
            log.info("group %s: %s", self.group, message)

    def __contains__(self, what: str) -> bool:
        return what in self._standing

    def messages(self) -> list[str]:
        return list(self._standing.values())
