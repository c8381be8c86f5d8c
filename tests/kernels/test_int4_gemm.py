"""The int4 dequantize-GEMM against the fp64 product with the dequantized weight.

The kernel runs under the Triton interpreter in the worker process (see
`interpreter_worker`), on the packed layout `Int4Weight` serves off the CPU, and is
compared with `Int4Weight.dequantize()`, the reference of every int4 format. Cases cover
every group size, a K tile inside one group and one spanning several, split-K, one row,
rows and outputs that do not fill their tiles, and LoRA added on top of a fused
projection as the model adds it. Bad arguments are refused before anything runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pytest
import torch

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.kernels.configs import KernelConfig, int4_gemm_config
from loraplex.runtime.kernels.launch_costs import recorded_launches
from loraplex.runtime.layers.codebook import CodebookWeight
from loraplex.runtime.layers.quantized import Int4Weight, QuantizedWeight, int4_kernel
from tests.kernels import interpreter_worker
from tests.kernels.backends import WORKER_TIMEOUT_S
from tests.kernels.problems import make_problem, segments_of
from tests.kernels.reference import lora_ref

# largest error allowed, relative to the output's largest magnitude: the weight is rounded
# to the activation dtype before the dot, and the output to it after
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
H100_SMS = 132


@dataclass(frozen=True)
class Case:
    group_size: int
    rows: int  # T
    d_out: int  # N
    d_in: int  # K
    dtype: torch.dtype
    config: KernelConfig | None = None  # None: the launcher's own choice (1 SM off CUDA)

    def __str__(self) -> str:
        tiles = "auto" if self.config is None else (
            f"{self.config.block_m}x{self.config.block_n}x{self.config.block_k}"
            f"s{self.config.split_k}")
        return (f"g{self.group_size}-T{self.rows}-N{self.d_out}-K{self.d_in}-"
                f"{str(self.dtype).removeprefix('torch.')}-{tiles}")


CASES = [
    # decode: one row, a 128-wide K tile spanning 4 groups, N = 80 over 64-wide blocks
    Case(32, 1, 80, 512, torch.float32),
    Case(32, 3, 48, 256, torch.bfloat16),
    # split-K (fp32 partials summed by the last split), T = 37 over 16-row tiles, K tile = group
    Case(64, 37, 48, 256, torch.float16, KernelConfig(16, 32, 64, split_k=2)),
    # prefill tiles (64 x 128 x 64, inside one group): T and N both cut short
    Case(128, 70, 40, 512, torch.bfloat16),
    Case(128, 19, 96, 256, torch.float32, KernelConfig(32, 64, 32, split_k=4)),
    # K tiles a half and a quarter of a group wide, split 4 ways
    Case(256, 5, 96, 512, torch.float32, KernelConfig(16, 32, 128, split_k=4)),
    Case(256, 17, 64, 768, torch.float16, KernelConfig(16, 16, 64, split_k=4)),
    # splits of unequal length: K = 7 tiles of 32 in splits of 2, 2, 2 and 1 tiles
    Case(32, 6, 48, 224, torch.float32, KernelConfig(16, 16, 32, split_k=4)),
]


def quantized_problem(case: Case, kernel: str = "triton") -> tuple[Int4Weight, torch.Tensor]:
    generator = torch.Generator().manual_seed(case.group_size + case.rows)
    weight = torch.randn(case.d_out, case.d_in, generator=generator).to(case.dtype)
    x = torch.randn(case.rows, case.d_in, generator=generator).to(case.dtype)
    return Int4Weight.quantize(weight, case.group_size, kernel=kernel), x


def assert_matches_dequantized(y: torch.Tensor, x: torch.Tensor, weight: QuantizedWeight,
                               dtype: torch.dtype) -> None:
    expected = x.double() @ weight.dequantize().double().t()  # [T, N]
    assert y.dtype == dtype and y.shape == expected.shape
    scale = expected.abs().max().item()
    error = (y.double() - expected).abs().max().item()
    assert error <= TOLERANCE[dtype] * scale, f"error {error:.3g} at scale {scale:.3g}"


def run_interpreted(executor, function, *args):
    return executor.submit(function, *args).result(timeout=WORKER_TIMEOUT_S)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_equals_the_dequantized_product(interpreter_executor, case: Case) -> None:
    weight, x = quantized_problem(case)
    config = asdict(case.config) if case.config else None
    y = run_interpreted(interpreter_executor, interpreter_worker.int4_matmul, x, weight.packed,
                        weight.scales_and_zeros, case.group_size, config)
    assert_matches_dequantized(y, x, weight, case.dtype)
    assert run_interpreted(interpreter_executor, interpreter_worker.int4_counters_left_set) == 0


@pytest.mark.timeout(120)
def test_an_empty_batch_gives_an_empty_output(interpreter_executor) -> None:
    weight, x = quantized_problem(Case(32, 1, 48, 128, torch.float16))
    y = run_interpreted(interpreter_executor, interpreter_worker.int4_matmul, x[:0],
                        weight.packed, weight.scales_and_zeros, 32, None)
    assert y.shape == (0, 48) and y.dtype == torch.float16


@pytest.mark.timeout(120)
def test_lora_on_top_of_an_int4_fused_projection(interpreter_executor) -> None:
    """q|k|v shards served from int4 codes, then each row's adapter delta added."""
    output_sizes, d_in, dtype = (48, 16, 16), 256, torch.float16
    token_slots = [2, -1, 0, 0, 3, -1, 1, 2, 2]
    problem = make_problem(d_in=d_in, slice_widths=list(output_sizes), ranks=[4, 8, 1, 0],
                           max_rank=8, indptr=segments_of(token_slots)[0],
                           slots=segments_of(token_slots)[1], dtype=dtype)
    weight = torch.randn(sum(output_sizes), d_in).to(dtype)

    y, dequantized = run_interpreted(
        interpreter_executor, interpreter_worker.int4_linear_with_lora, weight, 64,
        output_sizes, problem.x, problem.lora_a, problem.lora_b,
        (problem.indptr, problem.slots), problem.ranks)

    base = problem.x.double() @ dequantized.double().t()
    expected = lora_ref(base, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
                        problem.token_slots, problem.rank_list)
    scale = expected.abs().max().item()
    assert (y.double() - expected).abs().max().item() <= TOLERANCE[dtype] * scale
    delta = (expected - base).abs().amax(dim=1)
    assert (delta[[0, 2, 6]] > 1e-2 * scale).all()  # the adapters changed their rows


def test_dequantize_fallback_equals_the_dequantized_product() -> None:
    """Where Triton cannot run the weight is dequantized per product: same result."""
    case = Case(64, 9, 48, 256, torch.float32)
    weight, x = quantized_problem(case, kernel="dequantize")
    assert_matches_dequantized(weight.linear(x), x, weight, torch.float32)
    for kernel in ("cpu", "panels") if cpu_linear.available() else ("cpu",):
        assert torch.equal(weight.codes(), quantized_problem(case, kernel=kernel)[0].codes())


def test_each_device_gets_its_int4_kernel() -> None:
    assert int4_kernel(torch.device("cpu")) == ("panels" if cpu_linear.available() else "cpu")
    assert int4_kernel(torch.device("meta")) == "triton"
    assert int4_kernel(torch.device("mps")) == "dequantize"
    with pytest.raises(ValueError, match="int4 kernel must be one of"):
        quantized_problem(Case(32, 1, 16, 64, torch.float32), kernel="tinygemm")


META_WEIGHTS = {"int4": lambda weight: Int4Weight.quantize(weight, 128),
                "nf4": CodebookWeight.quantize_nf4}  # NF4: fp32 scales per 64 inputs


@pytest.mark.parametrize("name", list(META_WEIGHTS))
def test_a_meta_product_is_costed_at_four_bits_per_weight(name: str) -> None:
    """The step cost model's view of a Llama-3-8B down projection in decode."""
    with torch.device("meta"):
        weight = META_WEIGHTS[name](torch.empty(4096, 14336, dtype=torch.bfloat16))
        x = torch.empty(8, 14336, dtype=torch.bfloat16)
    assert weight.kernel == "triton"
    with recorded_launches() as launches:
        y = weight.linear(x)
    assert y.shape == (8, 4096) and y.device.type == "meta"
    (cost,) = launches
    codes_bytes = 4096 * 14336 // 2
    assert cost.kind == "linears" and cost.flops == 2 * 8 * 4096 * 14336
    assert codes_bytes < cost.read < 1.2 * codes_bytes  # not the 2 bytes of a bf16 weight


def test_a_split_product_is_one_launch_with_its_partials_counted() -> None:
    from loraplex.runtime.kernels.int4_gemm import int4_matmul

    with torch.device("meta"):
        weight = Int4Weight.quantize(torch.empty(4096, 4096, dtype=torch.bfloat16), 128)
        x = torch.empty(2, 4096, dtype=torch.bfloat16)
    costs = {}
    for split_k in (1, 8):
        with recorded_launches() as launches:
            int4_matmul(x, weight.packed, weight.scales_and_zeros, 128,
                        config=KernelConfig(16, 64, 128, split_k=split_k))
        (costs[split_k],) = launches
    partials = 8 * 2 * 4096 * 4  # fp32 [splits, T, N], written once and read once
    assert costs[8].launches == costs[1].launches == 1
    assert costs[8].read - costs[1].read == costs[8].written - costs[1].written == partials


@pytest.mark.parametrize(("rows", "d_out", "d_in"), [(1, 4096, 4096), (64, 28672, 4096),
                                                      (2048, 6144, 4096), (1, 4096, 11008)])
def test_configs_fill_the_gpu_and_tile_k_exactly(rows, d_out, d_in) -> None:
    config = int4_gemm_config(rows, d_out, d_in, num_sms=H100_SMS)
    assert d_in % config.block_k == 0 and config.block_k >= 16
    assert config.block_m >= min(rows, 16)
    programs = -(-rows // config.block_m) * -(-d_out // config.block_n) * config.split_k
    assert programs >= H100_SMS
    if rows >= 2048:
        assert config.split_k == 1 and config.block_m == 128


def _bad(**changes):
    case = Case(32, 4, 32, 128, torch.float16)
    weight, x = quantized_problem(case)
    args = dict(x=x, packed=weight.packed, scales_and_zeros=weight.scales_and_zeros,
                group_size=32, config=None)
    args.update({name: change(args[name]) for name, change in changes.items()})
    return args


BAD_ARGS = {
    "x_1d": (_bad(x=lambda x: x[0]), "x must be 2-D"),
    "x_integer": (_bad(x=lambda x: x.int()), "float16, bfloat16 or float32"),
    "x_strided": (_bad(x=lambda x: x.t().contiguous().t()), "contiguous rows"),
    "x_wrong_k": (_bad(x=lambda x: x[:, :96]), "codes per row but x has K=96"),
    "group_size": (_bad(group_size=lambda g: 48), "group_size must be one of"),
    "packed_int32": (_bad(packed=lambda p: p.int()), "packed must be uint8"),
    "packed_strided": (_bad(packed=lambda p: p.t().contiguous().t()), "packed must be contig"),
    "table_shape": (_bad(scales_and_zeros=lambda t: t[:, :16]), r"must be \[K/g, N, 2\]"),
    "table_dtype": (_bad(scales_and_zeros=lambda t: t.to(torch.int8)), "contiguous float"),
    "table_elsewhere": (_bad(scales_and_zeros=lambda t: t.to("meta")), "is on meta but x"),
    "block_k": (_bad(config=lambda c: KernelConfig(16, 16, 48)), "block_k must be a power"),
    "on_cpu": (_bad(), "needs CUDA tensors"),
}


@pytest.mark.parametrize("name", BAD_ARGS)
def test_bad_arguments_are_refused_by_name(name) -> None:
    from loraplex.runtime.kernels.int4_gemm import int4_matmul

    args, message = BAD_ARGS[name]
    with pytest.raises(ValueError, match=message):
        int4_matmul(**args)
