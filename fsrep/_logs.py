"""Logging set-up shared by both daemons: a file under ``.fsrep/`` always,
stderr too in the foreground; lines of text, or (``--log-format json``)
one JSON object per line for a log shipper.

A JSON line has ``time``, ``level``, ``group``, ``position``, ``event`` and
``message``. Call sites that know them pass ``group``, ``position`` and
``event`` as ``extra`` (a state change does); otherwise the group is read
off the message (the daemons' lines about a group begin ``group <id>``),
and the event is the module that logged it.

The log file is reopened by ``reopen_logs`` (both daemons call it on
SIGHUP), so logrotate can move it away and have the next line go to a new
file.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
LOG_FORMATS = ("text", "json")
_GROUP = re.compile(r"\bgroup ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_POSITION = re.compile(r"\bseq \d+ of generation [0-9a-f]+")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        group = getattr(record, "group", None)
        if group is None:
            found = _GROUP.search(message)
            group = found.group(1) if found else None
        position = getattr(record, "position", None)
        if position is None:
            found = _POSITION.search(message)
            position = found.group(0) if found else None
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "group": group,
            "position": None if position is None else str(position),
            "event": getattr(record, "event", None) or record.name.rpartition(".")[2].lstrip("_"),
            "message": message,
            "pid": record.process,
        }
        for key in ("state", "previous", "reason"):
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        return json.dumps(line, ensure_ascii=False)


class _LogFile(logging.FileHandler):
    """The daemon's log file. When a line cannot be written (a full disk),
    it is dropped and counted — never the standard library's traceback
    dump on stderr for every record — and the count is written with the
    next line that fits."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            note = logging.LogRecord(record.name, logging.WARNING, __file__, 0,
                                     "%d log lines were lost: the log file could not be written", (dropped,),
                                     None)
            super().emit(note)
            if self.dropped:  # still failing: this record is lost as well
                self.dropped = dropped + 1
                return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.dropped += 1


    def reopen(self) -> None:
        """Close the file; the next record opens the path again (a new
        file once logrotate moved the old one away)."""
        with self.lock:  # type: ignore[union-attr] - created with the handler
            if self.stream is not None:
                stream, self.stream = self.stream, None  # type: ignore[assignment] - emit opens it again
                stream.close()


def setup_logging(logfile: Path | None, *, stderr: bool, verbose: bool = False, log_format: str = "text") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)
    if logfile is not None:
        file_handler = _LogFile(logfile)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    if stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(formatter)
        root.addHandler(err)
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)


def reopen_logs() -> None:
    """Reopen the log file at its path (on SIGHUP, after logrotate moved it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _LogFile):
            handler.reopen()
    logging.getLogger(__name__).info("log file reopened")
