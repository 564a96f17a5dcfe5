"""The daemons' log file: lines that cannot be written (a full disk) are
counted, never a traceback per line, and the count is written with the
first line that fits again. Each case runs in a process of its own, as a
daemon does, so the test run's own logging is left alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FULL_DISK = """
import contextlib, logging, sys
from fsrep._logs import setup_logging
setup_logging(sys.argv[1], stderr=False)
[handler] = logging.getLogger().handlers
log = logging.getLogger("fsrep.test")
log.info("before")
kept, full = handler.stream, open("/dev/full", "w")  # every write fails with ENOSPC, as on a full disk
handler.stream = full
for i in range(3):
    log.info("lost %d", i)
handler.stream = kept
with contextlib.suppress(OSError):
    full.close()
log.warning("after")
"""

LEVELS = """
import logging, sys
from fsrep._logs import setup_logging
log = logging.getLogger("fsrep.test")
setup_logging(sys.argv[1], stderr=False)
log.debug("hidden")
log.info("shown")
logging.getLogger("pyfuse3").info("the library's chatter")
setup_logging(sys.argv[2], stderr=True, verbose=True)
log.debug("now shown")
"""


def _daemon(script: str, *args: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done


def _messages(log: Path) -> list[str]:
    return [line.split(": ", 1)[1] for line in log.read_text().splitlines()]


def test_lines_lost_to_a_full_disk_are_counted_in_the_next_line_that_fits(tmp_path: Path) -> None:
    log = tmp_path / "fsrep.log"
    done = _daemon(FULL_DISK, log)
    assert _messages(log) == ["before", "3 log lines were lost: the log file could not be written", "after"]
    assert " WARNING " in log.read_text().splitlines()[1]
    assert done.stderr == ""  # not the standard library's dump per failed line


def test_a_daemon_logs_info_by_default_and_debug_when_verbose(tmp_path: Path) -> None:
    quiet, verbose = tmp_path / "quiet.log", tmp_path / "verbose.log"
    done = _daemon(LEVELS, quiet, verbose)
    assert _messages(quiet) == ["shown"]
    assert _messages(verbose) == ["now shown"]
    assert done.stderr.endswith(": now shown\n")  # in the foreground, on stderr too
