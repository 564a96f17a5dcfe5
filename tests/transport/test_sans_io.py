"""The codec and session are sans-IO: they import no trio, socket, os or select."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import transport

SANS_IO = ("_frames", "_codec", "_session", "_auth", "_errors")
FORBIDDEN = {"trio", "socket", "os", "select", "selectors", "asyncio"}


def _imported_modules(source: str) -> set[str]:
    """Top-level names of every module *source* imports, wherever it does."""
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            imported.add(str(node.args[0].value).split(".")[0])
    return imported


def test_the_import_finder_sees_every_form_of_import() -> None:
    source = "import os.path\nfrom socket import socket\ndef f():\n    import trio\n__import__('select')\n"
    assert _imported_modules(source) == {"os", "socket", "trio", "select"}


@pytest.mark.parametrize("name", SANS_IO)
def test_sans_io_module_imports_no_io_module(name: str) -> None:
    source = (Path(transport.__file__).parent / f"{name}.py").read_text()
    found = _imported_modules(source) & FORBIDDEN
    assert not found, f"transport/{name}.py imports {sorted(found)}"


def test_importing_the_sans_io_modules_does_not_load_trio_or_sockets() -> None:
    # A stand-in package, so that transport/__init__.py (which also loads the
    # trio glue) is not run; only the sans-IO modules are imported.
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('transport'); pkg.__path__ = [sys.argv[1]]; sys.modules['transport'] = pkg\n"
        "before = set(sys.modules)\n"
        "import transport._codec, transport._session, transport._frames, transport._auth\n"
        "loaded = set(sys.modules) - before\n"
        "assert 'transport._session' in loaded, loaded\n"
        "bad = {'trio', 'socket', 'select', 'selectors', 'asyncio'} & set(sys.modules)\n"
        "assert not bad, f'loaded {sorted(bad)}'\n"
        "assert not any(m.startswith('trio') for m in sys.modules), 'a trio module was loaded'\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(Path(transport.__file__).parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
