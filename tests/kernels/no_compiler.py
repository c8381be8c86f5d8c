"""Running a script as on a machine whose C compiler does not work (`CC=false`, an empty
kernel cache), for the tests that the compiled CPU kernels fall back to torch's ops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_without_a_compiler(script: str, cache: Path) -> subprocess.CompletedProcess[str]:
    """`script` in a fresh interpreter with a failing compiler and `cache` as the cache
    folder; raises if it fails."""
    env = {**os.environ, "CC": "false", "LORAPLEX_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
