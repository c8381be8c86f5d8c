"""Build a cache folder once, even when several processes start at the same moment.

The builder writes into a private temporary folder that is renamed into place when
complete, under an exclusive file lock: a process that waited on the lock finds the
folder done and skips the work, and a crash never leaves a half-written folder behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_folder_once(folder: Path, build: Callable[[Path], None],
                      is_complete: Callable[[Path], bool]) -> Path:
    """Return `folder`, calling `build(tmp)` to create it if it is not complete yet."""
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock_path = folder.parent / f".{folder.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(folder):
            return folder
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            build(staging)
            if folder.exists():
                shutil.rmtree(folder)  # an incomplete leftover
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder
