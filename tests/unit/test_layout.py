"""The repository's layout keeps Python itself working and each part's imports in bounds.

`operator` is a standard-library module: from the repository root, the `operator/` folder
must never be imported in its place. The router and the operator ship without torch and
without the runtime; the wire contracts are imported by all three parts.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={"PYTHONPATH": "."}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_root_on_the_path_does_not_shadow_the_standard_library():
    printed = _run("import collections, operator; print(operator.__file__)")
    standard_library = Path(collections.__file__).parent.parent
    assert Path(printed) == standard_library / "operator.py"


@pytest.mark.timeout(120)
def test_router_operator_and_contracts_import_neither_torch_nor_the_runtime():
    modules = _run(
        "import sys, loraplex.contracts.adapters, loraplex.contracts.placements, "
        "loraplex.router.main, loraplex.router.app, loraplex.operator.main; "
        "print(sorted({m.split('.')[0] if not m.startswith('loraplex.') else "
        "'.'.join(m.split('.')[:2]) for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'triton') or m.startswith('loraplex.runtime')}))")
    assert modules == "[]"


def test_no_part_but_the_runtime_names_the_runtime_in_its_imports():
    for folder in ("router", "operator", "loraplex/contracts"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "loraplex.runtime" not in path.read_text(), path
