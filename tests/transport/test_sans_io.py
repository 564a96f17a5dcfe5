"""The codec and session are sans-IO: no trio, socket, os or select."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import transport

SANS_IO = ("_frames", "_codec", "_session", "_auth", "_errors")
FORBIDDEN = {"trio", "socket", "os", "select", "asyncio"}


def test_sans_io_modules_import_no_io_module() -> None:
    root = Path(transport.__file__).parent
    for name in SANS_IO:
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & FORBIDDEN, f"transport/{name}.py imports {imported & FORBIDDEN}"


def test_importing_the_session_does_not_load_trio() -> None:
    code = ("import sys, importlib.util, types\n"
            "pkg = types.ModuleType('transport'); pkg.__path__ = [sys.argv[1]]; sys.modules['transport'] = pkg\n"
            "import transport._session\n"
            "assert 'trio' not in sys.modules, 'trio was imported'\n")
    done = subprocess.run([sys.executable, "-c", code, str(Path(transport.__file__).parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
