"""The int4 dequantize-GEMM with a codebook (NF4, FP4) against the fp64 product with the
dequantized weight.

The GPU path of `CodebookWeight`: codes in int4's [N, K / 2] layout, fp32 scales [K / g, N],
w = codebook[q] * scale. Run under the Triton interpreter in the worker process (see
`interpreter_worker`) and compared with `CodebookWeight.dequantize()`, the reference the
CPU panels and bitsandbytes' checkpoints are checked against. Cases: NF4's blocks of 64 and
other group sizes, a K tile inside one group and one spanning several, split-K, one row,
rows and outputs that do not fill their tiles, FP4's codebook, a weight built as a CUDA
device builds it. Bad arguments are refused before anything runs.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from loraplex.runtime.kernels.configs import KernelConfig
from loraplex.runtime.layers.codebook import NF4, CodebookWeight, codebook_kernel
from tests.kernels import interpreter_worker
from tests.kernels.test_int4_gemm import (
    TOLERANCE,
    Case,
    assert_matches_dequantized,
    run_interpreted,
)

# bitsandbytes' FP4 values (sign, 2 exponent bits, 1 mantissa bit), normalised to 1
FP4 = (0.0, 0.0052083, 0.6666667, 1.0, 0.3333333, 0.5, 0.1666667, 0.25,
       -0.0, -0.0052083, -0.6666667, -1.0, -0.3333333, -0.5, -0.1666667, -0.25)

CASES = [
    # decode: one row, K tile of 128 spanning NF4's blocks of 64, N = 80 over 64-wide blocks
    Case(64, 1, 80, 512, torch.float32),
    Case(64, 3, 48, 256, torch.bfloat16),
    # split-K (fp32 partials summed by the last split), T = 37 over 16-row tiles
    Case(64, 37, 48, 256, torch.float16, KernelConfig(16, 32, 64, split_k=2)),
    # K tiles of 32 inside a group of 128, split 4 ways; prefill tiles cut short
    Case(128, 19, 96, 256, torch.float32, KernelConfig(32, 64, 32, split_k=4)),
    Case(32, 70, 40, 512, torch.bfloat16),
]


def codebook_problem(case: Case, codebook: tuple[float, ...] = NF4,
                     kernel: str = "triton") -> tuple[CodebookWeight, torch.Tensor]:
    generator = torch.Generator().manual_seed(case.group_size + case.rows)
    codes = torch.randint(0, 16, (case.d_out, case.d_in), generator=generator)
    scales = 0.5 + torch.rand(case.d_out, case.d_in // case.group_size, generator=generator)
    x = torch.randn(case.rows, case.d_in, generator=generator).to(case.dtype)
    return CodebookWeight(codes, scales, torch.tensor(codebook), case.group_size, kernel), x


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_equals_the_dequantized_product(interpreter_executor, case: Case) -> None:
    weight, x = codebook_problem(case)
    config = asdict(case.config) if case.config else None
    y = run_interpreted(interpreter_executor, interpreter_worker.codebook_matmul, x,
                        weight.packed, weight.scales, weight.codebook, case.group_size, config)
    assert_matches_dequantized(y, x, weight, case.dtype)
    assert run_interpreted(interpreter_executor, interpreter_worker.int4_counters_left_set) == 0


@pytest.mark.timeout(120)
def test_fp4_codes_read_their_own_codebook(interpreter_executor) -> None:
    case = Case(64, 5, 32, 128, torch.float32)
    weight, x = codebook_problem(case, FP4)
    y = run_interpreted(interpreter_executor, interpreter_worker.codebook_matmul, x,
                        weight.packed, weight.scales, weight.codebook, 64, None)
    assert_matches_dequantized(y, x, weight, torch.float32)
    nf4_reading = x.double() @ codebook_problem(case)[0].dequantize().double().t()
    assert (y.double() - nf4_reading).abs().max() > 0.1  # the codebook is what it reads


@pytest.mark.timeout(120)
def test_an_nf4_weight_built_for_a_gpu_serves_through_the_kernel(interpreter_executor) -> None:
    weight = torch.randn(48, 256)
    x = torch.randn(6, 256)
    y, dequantized = run_interpreted(interpreter_executor, interpreter_worker.codebook_layer,
                                     weight, x)
    assert torch.equal(dequantized, CodebookWeight.quantize_nf4(weight, "dequantize")
                       .dequantize())  # the same codes and scales as on every other path
    expected = x.double() @ dequantized.double().t()
    assert (y.double() - expected).abs().max() <= TOLERANCE[torch.float32] * expected.abs().max()


def test_each_device_gets_its_codebook_kernel() -> None:
    assert codebook_kernel(torch.device("meta"), 64) == "triton"
    assert codebook_kernel(torch.device("meta"), 96) == "dequantize"  # a group it cannot tile
    assert codebook_kernel(torch.device("mps"), 64) == "dequantize"


def _bad(**changes):
    weight, x = codebook_problem(Case(64, 4, 32, 128, torch.float16))
    args = dict(x=x, packed=weight.packed, scales=weight.scales, codebook=weight.codebook,
                group_size=64)
    args.update({name: change(args[name]) for name, change in changes.items()})
    return args


BAD_ARGS = {
    "scales_per_output": (_bad(scales=lambda s: s.t().contiguous()),
                          r"scales must be \[K/g, N\] = \(2, 32\)"),
    "bf16_scales": (_bad(scales=lambda s: s.bfloat16()), "scales must be a contiguous"),
    "short_codebook": (_bad(codebook=lambda c: c[:8]), "codebook must be 16 contiguous fp32"),
    "fp16_codebook": (_bad(codebook=lambda c: c.half()), "codebook must be 16 contiguous fp32"),
    "group_48": (_bad(group_size=lambda g: 48), "group_size must be one of"),
}


@pytest.mark.parametrize("name", list(BAD_ARGS))
def test_bad_arguments_are_refused(name: str) -> None:
    from loraplex.runtime.kernels.int4_gemm import codebook_matmul

    args, message = BAD_ARGS[name]
    with pytest.raises(ValueError, match=message):
        codebook_matmul(**args)
