"""The tree passes its linters: ruff everywhere, and mypy on the sans-IO
packages whose types are their contract (transport, tracking)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "fsrep", "tracking", "transport", "tools", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing_in_the_sans_io_packages() -> None:
    done = _run("mypy", "transport", "tracking")
    assert done.returncode == 0, done.stdout + done.stderr
