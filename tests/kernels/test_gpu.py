"""The compiled Triton kernels on a GPU, at Llama-3-8B shapes, against the fp64 oracle.

Skipped without CUDA (`bench/gpu_check.sh` runs them on a GPU machine). bf16 only exists
here: the interpreter cannot run a bf16 dot.
"""

from __future__ import annotations

import random

import pytest
import torch

from loraplex.runtime.kernels import lora_apply
from loraplex.runtime.kernels.configs import shrink_config
from loraplex.runtime.kernels.segments import LoraSegments
from tests.kernels.problems import LoraProblem, make_problem, segments_of
from tests.kernels.reference import expand_ref, lora_ref, shrink_ref
from tests.kernels.test_lora_ops import TOLERANCES

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

LLAMA3_8B = {  # group: (d_in, slice widths); hidden 4096, 32 q / 8 kv heads x 128, ffn 14336
    "qkv": (4096, [4096, 1024, 1024]),
    "o": (4096, [4096]),
    "gate_up": (4096, [14336, 14336]),
    "down": (14336, [4096]),
}
NUM_SLOTS, MAX_RANK = 32, 64


def slot_ranks(seed: int) -> list[int]:
    generator = random.Random(seed)
    return [1, MAX_RANK] + [generator.choice([8, 16, 32, 64]) for _ in range(NUM_SLOTS - 2)]


def layout(name: str, seed: int) -> tuple[list[int], list[int]]:
    generator = random.Random(seed)
    if name == "decode":  # 64 rows, 32 adapters in random order, some rows without
        rows = [generator.randrange(-1, NUM_SLOTS) for _ in range(64)]
    else:  # prefill: two long prompts, rows without adapter, then a decode tail
        tail = [generator.randrange(NUM_SLOTS) for _ in range(9)]
        rows = [3] * 300 + [-1] * 17 + [1] * 200 + tail
    return segments_of(rows)


def gpu_problem(group: str, layout_name: str, dtype: torch.dtype, seed: int = 0) -> LoraProblem:
    d_in, widths = LLAMA3_8B[group]
    indptr, slots = layout(layout_name, seed)
    return make_problem(
        d_in=d_in, slice_widths=widths, ranks=slot_ranks(seed), max_rank=MAX_RANK,
        indptr=indptr, slots=slots, dtype=dtype, seed=seed, device="cuda",
    )  # fmt: skip


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout_name", ["decode", "prefill"])
@pytest.mark.parametrize("group", LLAMA3_8B)
def test_triton_matches_reference(group: str, layout_name: str, dtype: torch.dtype) -> None:
    from loraplex.runtime.kernels import sgmv

    problem = gpu_problem(group, layout_name, dtype)
    segments = problem.segments("cuda")
    y = problem.y.clone()

    v = sgmv.sgmv_shrink(problem.x, problem.lora_a, segments, problem.ranks)
    sgmv.sgmv_expand(y, v, problem.lora_b, problem.slice_offsets, segments, problem.ranks)
    torch.cuda.synchronize()

    expected_v = shrink_ref(problem.x, problem.lora_a, problem.token_slots, problem.rank_list)
    torch.testing.assert_close(v.double(), expected_v, atol=1e-3, rtol=1e-3)  # fp32 out
    expected_y = expand_ref(
        problem.y, v, problem.lora_b, problem.slice_offsets, problem.token_slots,
        problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected_y, dtype)
    untouched = [row for row, slot in enumerate(problem.token_slots) if slot == -1]
    assert torch.equal(y[untouched], problem.y[untouched])


def test_decode_uses_split_k_and_fp32_is_exact() -> None:
    problem = gpu_problem("qkv", "decode", torch.float32, seed=1)
    segments = problem.segments("cuda")
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    config = shrink_config(segments, MAX_RANK, 4096, 3, num_sms)
    assert config.split_k > 1  # the atomic reduction is what runs here
    y = problem.y.clone()

    lora_apply(
        y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets, segments,
        problem.ranks,
    )  # fmt: skip

    expected = lora_ref(
        problem.y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    torch.testing.assert_close(y.double(), expected, atol=1e-4, rtol=1e-4)


def test_torch_path_agrees_on_gpu() -> None:
    problem = gpu_problem("gate_up", "decode", torch.bfloat16, seed=2)
    segments = problem.segments("cuda")
    y_triton, y_torch = problem.y.clone(), problem.y.clone()
    args = (problem.lora_a, problem.lora_b, problem.slice_offsets, segments, problem.ranks)

    lora_apply(y_triton, problem.x, *args, backend="triton")
    lora_apply(y_torch, problem.x, *args, backend="torch")

    expected = lora_ref(
        problem.y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y_triton, expected, torch.bfloat16)
    assert_close(y_torch, expected, torch.bfloat16)


def test_lora_apply_replays_in_a_cuda_graph() -> None:
    """Metadata lives on the segments and the pools are indexed by slot: a captured step
    replays with new activations and no host work."""
    problem = gpu_problem("qkv", "decode", torch.bfloat16, seed=3)
    segments = LoraSegments.from_lists(problem.indptr, problem.slots, "cuda")
    x, y = problem.x.clone(), problem.y.clone()
    args = (problem.lora_a, problem.lora_b, problem.slice_offsets, segments, problem.ranks)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        lora_apply(y, x, *args)  # warm up: compile, build the tiles
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y.copy_(problem.y)
        lora_apply(y, x, *args)

    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()

    expected = lora_ref(
        problem.y, x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected, torch.bfloat16)


def test_rank_major_lora_b_on_gpu() -> None:
    problem = gpu_problem("qkv", "decode", torch.bfloat16, seed=4)
    rank_major = problem.lora_b.transpose(1, 2).contiguous().transpose(1, 2)
    y = problem.y.clone()

    lora_apply(
        y, problem.x, problem.lora_a, rank_major, problem.slice_offsets,
        problem.segments("cuda"), problem.ranks,
    )  # fmt: skip

    expected = lora_ref(
        problem.y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
        problem.token_slots, problem.rank_list,
    )  # fmt: skip
    assert_close(y, expected, torch.bfloat16)
