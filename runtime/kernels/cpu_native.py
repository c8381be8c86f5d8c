"""C kernels for the CPU path, compiled on the machine that runs them and loaded with ctypes.

A few operations of a small decode batch are cheap in bytes and FLOPs but expensive as
torch ops (many small calls, copies, slow bf16 kernels). Their C sources sit beside this
module; `load(name)` compiles `name.c` on first use with the machine's C compiler (`CC`,
else `cc`), for this CPU's vector instructions and with OpenMP (torch's own runtime, so
both share one thread pool), and caches the library under the cache folder by a hash of the
source, the flags and the CPU's feature list: a machine pays the compile (about a second)
once. Where the C library has vector forms of its math functions (glibc's libmvec), a
kernel is built against them (`LORAPLEX_VECTOR_MATH` defined, so a kernel may ask for them)
and, where that link fails, built without. Where no compiler works, `load` returns None and
callers keep the torch ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

from loraplex.runtime.config import default_cache_dir

log = logging.getLogger(__name__)

FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno")
VECTOR_MATH = (("-DLORAPLEX_VECTOR_MATH",), ("-lmvec",))  # (compile flags, libraries)
COMPILE_TIMEOUT_S = 120


_building = threading.Lock()  # one build at a time in a process (threads share a pid)


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The library built from `name.c` beside this module, or None (logged once)."""
    try:
        with _building:
            path = _built(name)
        return ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("the compiled CPU kernel %s is unavailable, using torch's ops: %s", name,
                    error)
        return None


def _built(name: str) -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler found (set CC)")
    source_path = Path(__file__).with_name(f"{name}.c")
    headers = sorted(source_path.parent.glob("*.h"))  # what the sources may include
    sources = [source_path.read_bytes(), *(header.read_bytes() for header in headers)]
    folder = Path(default_cache_dir()) / "kernels"
    builds = [((*FLAGS, *VECTOR_MATH[0]), VECTOR_MATH[1]), (FLAGS, ())]
    targets = []
    for flags, libraries in builds:
        key = hashlib.sha256(b"\0".join([*sources, compiler.encode(),
                                         " ".join((*flags, *libraries)).encode(),
                                         _cpu_signature()])).hexdigest()[:16]
        targets.append(folder / f"{name}-{key}.so")
    for target in targets:
        if target.exists():
            return target
    folder.mkdir(parents=True, exist_ok=True)
    for (flags, libraries), target in zip(builds, targets, strict=True):
        partial = folder / f".{target.stem}.{os.getpid()}.so"  # several processes may build
        result = subprocess.run([compiler, *flags, str(source_path), "-o", str(partial),
                                 *libraries],
                                capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if result.returncode == 0:
            os.replace(partial, target)
            return target
        partial.unlink(missing_ok=True)
    raise OSError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")  # the plain build's


def _cpu_signature() -> bytes:
    """What `-march=native` depends on: the machine and its CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} {flags}".encode()
