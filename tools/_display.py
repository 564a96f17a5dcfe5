"""The progress display of the tools that follow a long operation
(``fsrep-resync``, ``fsrep-move``): a rich progress bar (bytes, rate, ETA)
on a terminal, a plain line every few seconds otherwise, nothing for
``--json``."""

from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_EVERY = 2.0


class Display:
    def __init__(self, name: str, *, enabled: bool) -> None:
        self.name = name
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self.bar: Any = None
        self.task: Any = None
        self.last_line = 0.0

    def __enter__(self) -> Display:
        if self.enabled and self.tty:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn())
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def show(self, done: int, total: int | None, description: str, line: str, *, final: bool = False) -> None:
        """*done* of *total* bytes: on the bar with *description*, or as the
        plain *line* (at most every PLAIN_EVERY seconds, and the *final* one)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total or None, description=description)
            return
        now = time.monotonic()
        if now - self.last_line >= PLAIN_EVERY or final:
            self.last_line = now
            print(line, flush=True)
