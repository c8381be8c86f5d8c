"""The paged attention and fused layer kernels compile for Hopper and Ampere at Llama-3-8B
shapes.

As `test_compile.py` does for the LoRA kernels: Triton -> PTX -> cubin with the bundled
ptxas, no GPU needed, with the constants the launchers pass for a bf16 cache of head
dim 128 and 4 query heads per KV head; checks shared memory against the chip's limit and
that the dots use tensor cores.
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiling needs triton without the interpreter", allow_module_level=True)
if torch.cuda.is_available():  # test_gpu.py runs them for real there
    pytest.skip("a GPU is present: the GPU tests compile the kernels", allow_module_level=True)

from loraplex.runtime.kernels import paged_attention  # noqa: E402
from tests.kernels.test_compile import SHARED_MEMORY_LIMIT, assert_runs_on  # noqa: E402
from tests.kernels.test_compile import compile_kernel as compile_with  # noqa: E402

CACHE_POINTERS = {name: "*bf16" for name in ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr")}
FLOATS = {"qk_scale": "fp32"}


class Launch:
    num_warps = 4
    num_stages = 2


def compile_kernel(kernel, pointers: dict[str, str], constants: dict, capability: int):
    return compile_with(kernel, {**pointers, **FLOATS}, constants, Launch, capability)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("capability", [90, 80])
@pytest.mark.parametrize("splits", [1, 4])
def test_decode_compiles(capability, splits):
    pointers = {**CACHE_POINTERS, "part_acc_ptr": "*fp32", "part_ml_ptr": "*fp32"}
    if splits == 1:  # the launcher passes the output in their place
        pointers.update(part_acc_ptr="*bf16", part_ml_ptr="*bf16")
    binary = compile_kernel(
        paged_attention._decode_kernel, pointers,
        dict(ROWS=16, BLOCK_N=32, BLOCK_D=128, NUM_SPLITS=splits, UPCAST=False,
             DOT_PRECISION="tf32"), capability)
    assert_runs_on(binary, capability)
    if splits > 1:
        merge = compile_kernel(
            paged_attention._merge_splits_kernel,
            {"part_acc_ptr": "*fp32", "part_ml_ptr": "*fp32", "out_ptr": "*bf16"},
            dict(NUM_SPLITS=splits, BLOCK_D=128), capability)
        assert merge.asm["cubin"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("capability", [90, 80])
def test_prefill_compiles(capability):
    binary = compile_kernel(
        paged_attention._prefill_kernel, CACHE_POINTERS,
        dict(BLOCK_Q=16, GROUP_ROWS=4, BLOCK_N=32, BLOCK_D=128, UPCAST=False,
             DOT_PRECISION="tf32"), capability)
    assert_runs_on(binary, capability)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("capability", [90, 80])
def test_fused_layer_kernels_compile(capability):
    from loraplex.runtime.kernels import fused_layers

    bf16 = "*bf16"
    cases = [
        (fused_layers._rms_norm_kernel, {"x_ptr": bf16, "w_ptr": bf16, "out_ptr": bf16,
                                          "eps": "fp32"}, dict(BLOCK=4096)),
        (fused_layers._rotary_kernel, {"q_ptr": bf16, "k_ptr": bf16, "cos_ptr": bf16,
                                        "sin_ptr": bf16}, dict(HALF=64)),
        (fused_layers._silu_and_mul_kernel, {"x_ptr": bf16, "out_ptr": bf16},
         dict(BLOCK=1024)),
        (fused_layers._write_kv_kernel, {"k_ptr": bf16, "v_ptr": bf16, "k_cache_ptr": bf16,
                                          "v_cache_ptr": bf16, "slots_ptr": "*i64"},
         dict(BLOCK=1024)),
    ]
    for kernel, pointers, constants in cases:
        binary = compile_with(kernel, pointers, constants, Launch, capability)
        assert binary.metadata.shared <= SHARED_MEMORY_LIMIT[capability]
        assert binary.asm["cubin"], f"{kernel.fn.__name__}: ptxas produced no binary"
