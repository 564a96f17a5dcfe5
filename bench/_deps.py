"""Installs what the benchmark needs when it is missing: Debian packages
with apt-get, matplotlib (the ``bench`` extra of pyproject.toml) into the
venv the harness runs in. A machine is not kept between sessions, so the
harness cannot assume a previous run's installs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from _common import BenchError

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
INSTALL_TIMEOUT = 900.0


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "install ok installed"


def _run(argv: list[str], what: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no answer in {INSTALL_TIMEOUT:g}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise BenchError(f"{what}: exit {done.returncode}: {last[-1] if last else ''}")


def ensure_debian(packages: list[str]) -> list[str]:
    """apt-get install the *packages* not installed yet (after one
    ``apt-get update``); the ones it installed."""
    missing = [p for p in packages if not installed(p)]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)...", file=sys.stderr, flush=True)
        _run(["apt-get", "update", "-qq"], "apt-get update")
        _run(["apt-get", "install", "-y", "-qq", *missing], f"apt-get install {' '.join(missing)}")
    return missing


def bench_requirements() -> list[str]:
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["bench"]


def ensure_matplotlib() -> bool:
    """pip install the bench extra's requirements when matplotlib cannot be
    imported; whether it had to."""
    try:
        import matplotlib  # noqa: F401
        return False
    except ImportError:
        pass
    requirements = bench_requirements()
    print(f"installing {' '.join(requirements)} (pip)...", file=sys.stderr, flush=True)
    _run([sys.executable, "-m", "pip", "install", "-q", *requirements], f"pip install {' '.join(requirements)}")
    importlib.invalidate_caches()
    return True
