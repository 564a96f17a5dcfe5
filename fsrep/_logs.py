"""Logging set-up shared by both daemons: a file under ``.fsrep/`` always,
stderr too in the foreground."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


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


def setup_logging(logfile: Path | None, *, stderr: bool, verbose: bool = False) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    formatter = logging.Formatter(FORMAT)
    if logfile is not None:
        file_handler = _LogFile(logfile)
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    if stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(formatter)
        root.addHandler(err)
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
