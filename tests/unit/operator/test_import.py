"""The operator image has no torch: importing the operator's entry point must not load it."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_operator_imports_without_torch():
    code = ("import sys, loraplex.operator.main, loraplex.operator.crdgen; "
            "from loraplex.operator.handlers import build_registry; "
            "from loraplex.operator.config import OperatorConfig; "
            "build_registry(OperatorConfig()); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'triton')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]", result.stdout
