"""How the CPU kernels are built: against the C library's vector math where it links, and
without it where it does not (the kernel still builds and computes the same attention)."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from loraplex.runtime.kernels import cpu_native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


def dynamic_symbols(library: Path) -> str:
    return subprocess.run(["nm", "-D", str(library)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or platform.machine() != "x86_64",
                    reason="glibc's vector math is checked on x86-64")
@pytest.mark.skipif(shutil.which("nm") is None, reason="no nm")
def test_attention_calls_vector_exponentials_where_glibc_has_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPLEX_CACHE", str(tmp_path))
    library = cpu_native._built("cpu_attention")
    assert "_expf" in dynamic_symbols(library)
    assert "_ZGV" in dynamic_symbols(library)  # a vector variant of expf from libmvec


def test_a_library_without_vector_math_falls_back_to_the_scalar_build(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPLEX_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_native, "VECTOR_MATH",
                        (("-DLORAPLEX_VECTOR_MATH",), ("-lno_such_vector_math",)))
    library = cpu_native._built("cpu_attention")
    assert [path.name for path in (tmp_path / "kernels").iterdir()] == [library.name]
    assert ctypes.CDLL(str(library)).paged_decode_f32 is not None
    assert cpu_native._built("cpu_attention") == library  # found again, not rebuilt
