"""The kernels compile for Hopper and Ampere with the tile sizes the launchers pick.

The interpreter runs the kernels' logic but never compiles them. This compiles the real
thing (Triton -> PTX -> cubin with the bundled ptxas) for sm_90 and sm_80 on a machine
without a GPU, with the configurations the heuristics choose at Llama-3-8B shapes, and
checks what would otherwise only fail on the GPU: lowering errors, shared memory beyond
the chip's limit, and a dot that does not use tensor cores. It drives Triton's internal
compile API, which moves between releases: on a GPU machine the GPU tests replace it.
"""

from __future__ import annotations

import os

import pytest
import torch

from loraplex.runtime.kernels.configs import (
    FIXED_BLOCK_M,
    expand_config,
    fixed_tile_configs,
    shrink_config,
)
from loraplex.runtime.kernels.segments import LoraSegments, max_tiles

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiling needs triton without the interpreter", allow_module_level=True)
if torch.cuda.is_available():  # test_gpu.py compiles and runs them for real there
    pytest.skip("a GPU is present: the GPU tests compile the kernels", allow_module_level=True)

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from loraplex.runtime.kernels import sgmv  # noqa: E402

SHARED_MEMORY_LIMIT = {90: 232_448, 80: 166_912}  # bytes per block, opt-in maximum
MAX_RANK = 64
H100_SMS = 132

# (name, rows, distinct adapters, d_in, n_slices): decode and prefill on q/k/v and down
SCENARIOS = [
    ("decode_qkv", 64, 32, 4096, 3),
    ("prefill_down", 1024, 4, 14336, 1),
]


def batch(rows: int, adapters: int) -> LoraSegments:
    return LoraSegments.from_token_slots(sorted(row % adapters for row in range(rows)))


def compile_kernel(kernel, pointer_types: dict[str, str], constants: dict, config, capability):
    signature = {
        name: pointer_types.get(name, "*i32" if name.endswith("_ptr") else "i32")
        for name in kernel.arg_names
    }
    signature.update({name: "constexpr" for name in constants})
    source = ASTSource(kernel, signature, constexprs=constants)
    return triton.compile(
        source,
        target=GPUTarget("cuda", capability, 32),
        options={
            "num_warps": config.num_warps,
            "num_stages": config.num_stages,
            "enable_fp_fusion": True,  # as the launchers compile them
        },
    )


def assert_runs_on(compiled, capability: int) -> None:
    assert compiled.metadata.shared <= SHARED_MEMORY_LIMIT[capability]
    ptx = compiled.asm["ptx"]
    assert "mma" in ptx, "the dot did not lower to tensor-core instructions"
    assert compiled.asm["cubin"], "ptxas produced no binary"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("capability", [90, 80])
@pytest.mark.parametrize(("name", "rows", "adapters", "d_in", "num_slices"), SCENARIOS)
def test_kernels_compile_with_chosen_configs(name, rows, adapters, d_in, num_slices, capability):
    segments = batch(rows, adapters)
    shrink = shrink_config(segments, MAX_RANK, d_in, num_slices, num_sms=H100_SMS)
    expand = expand_config(segments, MAX_RANK, num_slices)
    assert_pair_compiles(shrink, expand, capability)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("rows", "d_in", "num_slices"), [(1, 4096, 3), (128, 14336, 1)])
def test_kernels_compile_with_fixed_tile_configs(rows, d_in, num_slices):
    """The configurations of a captured decode step's fixed tile lists (32 slots)."""
    num_tiles = max_tiles(rows, 32, FIXED_BLOCK_M)
    shrink, expand = fixed_tile_configs(rows, num_tiles, MAX_RANK, d_in, num_slices, H100_SMS)
    assert_pair_compiles(shrink, expand, 90)


def assert_pair_compiles(shrink, expand, capability: int) -> None:
    shrink_binary = compile_kernel(
        sgmv._sgmv_shrink_kernel,
        {"x_ptr": "*bf16", "a_ptr": "*bf16", "v_ptr": "*fp32"},
        dict(
            BLOCK_M=shrink.block_m,
            BLOCK_N=shrink.block_n,
            BLOCK_K=shrink.block_k,
            SPLIT_K=shrink.split_k,
            DOT_PRECISION="tf32",
        ),  # fmt: skip
        shrink,
        capability,
    )
    expand_binary = compile_kernel(
        sgmv._sgmv_expand_kernel,
        {"y_ptr": "*bf16", "v_ptr": "*fp32", "b_ptr": "*bf16"},
        dict(
            BLOCK_M=expand.block_m,
            BLOCK_N=expand.block_n,
            BLOCK_K=expand.block_k,
            DOT_PRECISION="tf32",
        ),  # fmt: skip
        expand,
        capability,
    )

    assert_runs_on(shrink_binary, capability)
    assert_runs_on(expand_binary, capability)
