"""The int4 dequantize-GEMM compiles for Hopper and Ampere at Llama-3-8B shapes.

As `test_compile.py` does for the LoRA kernels: Triton -> PTX -> cubin with the bundled
ptxas, no GPU needed, with the tile sizes `int4_gemm_config` picks for a decode step and
a prefill chunk (bf16 activations, group size 128, and 32 where a K tile spans several
groups); checks shared memory against the chip's limit and that the dot runs on tensor
cores.
"""

from __future__ import annotations

import os
import re

import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("compiling needs triton without the interpreter", allow_module_level=True)
if torch.cuda.is_available():  # a GPU compiles and runs it for real
    pytest.skip("a GPU is present: the GPU tests compile the kernels", allow_module_level=True)

from loraplex.runtime.kernels import int4_gemm  # noqa: E402
from loraplex.runtime.kernels.configs import int4_gemm_config  # noqa: E402
from tests.kernels.test_compile import H100_SMS, assert_runs_on, compile_kernel  # noqa: E402

POINTERS = {"x_ptr": "*bf16", "w_ptr": "*u8", "sz_ptr": "*bf16", "codebook_ptr": "*bf16",
            "y_ptr": "*bf16", "partials_ptr": "*fp32", "arrivals_ptr": "*i32"}
# NF4 / FP4: fp32 scales [K / g, N] and 16 fp32 codebook values
CODEBOOK_POINTERS = {**POINTERS, "sz_ptr": "*fp32", "codebook_ptr": "*fp32"}

# (name, rows, d_out, d_in, group size, codebook): decode on gate|up, prefill on down; NF4's
# blocks of 64
SCENARIOS = [
    ("decode_gate_up", 16, 28672, 4096, 128, False),
    ("decode_o_groups_of_32", 1, 4096, 4096, 32, False),
    ("prefill_down", 2048, 4096, 14336, 128, False),
    ("nf4_decode_gate_up", 4, 28672, 4096, 64, True),
    ("nf4_prefill_down", 2048, 4096, 14336, 64, True),
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("capability", [90, 80])
@pytest.mark.parametrize(("name", "rows", "d_out", "d_in", "group_size", "codebook"),
                         SCENARIOS)
def test_int4_gemm_compiles_with_chosen_configs(name, rows, d_out, d_in, group_size, codebook,
                                                 capability):
    config = int4_gemm_config(rows, d_out, d_in, num_sms=H100_SMS)
    binary = compile_kernel(
        int4_gemm._int4_gemm_kernel, CODEBOOK_POINTERS if codebook else POINTERS,
        dict(GROUP_SIZE=group_size, TILE_GROUPS=max(1, config.block_k // group_size),
             BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
             SPLIT_K=config.split_k, UPCAST=False, DOT_PRECISION="tf32", CODEBOOK=codebook),
        config, capability)
    assert_runs_on(binary, capability)
    if config.split_k > 1:  # the last split to arrive sees the others' partials
        assert re.search(r"atom\.global\.gpu\.acq_rel\.add", binary.asm["ptx"])
