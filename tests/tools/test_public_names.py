"""The tools use fsrep, tracking and transport only through the names their
packages export, and importing fsrep for them loads no FUSE binding."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fsrep

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"fsrep", "tracking", "transport"}


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for each name *path* imports from one of PACKAGES."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] in PACKAGES]
    return found


def test_tools_import_only_public_names() -> None:
    tools = sorted((ROOT / "tools").glob("*.py"))
    assert tools
    imported = [(path.name, module, name) for path in tools for module, name in _imports(path)]
    assert imported, "the tools import nothing of fsrep: this test looks at the wrong files"
    private = [entry for entry in imported if entry[1] not in PACKAGES or entry[2].startswith("_")]
    assert not private, f"private imports in tools/: {private}"
    missing = [entry for entry in imported if entry[1] == "fsrep" and not hasattr(fsrep, entry[2])]
    assert not missing, missing


def test_importing_fsrep_loads_no_fuse_binding() -> None:
    done = subprocess.run([sys.executable, "-c", "import sys, fsrep; print('pyfuse3' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
