"""The compiled CPU LoRA kernel against the fp64 oracle, and what happens where it cannot run.

The problems are those of `test_lora_ops`: garbage (NaN, 1e30) past every slot's rank and in
slots no row uses, so the kernel fails if it reads one element past a slot's rank; rows of
no adapter and of a rank-0 adapter must come out bit for bit unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from loraplex.runtime.kernels import cpu_lora, lora_apply, resolve_backend
from tests.kernels.no_compiler import run_without_a_compiler
from tests.kernels.problems import make_problem, segments_of
from tests.kernels.test_lora_ops import (
    LAYOUTS,
    MAX_RANK,
    RANKS,
    SHAPES,
    Case,
    assert_applied,
    build,
)

needs_compiler = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"
)


def rank_major(lora_b: torch.Tensor) -> torch.Tensor:
    """The engine's storage order of B: a [S, d_out, R] view of a contiguous [S, R, d_out]."""
    return lora_b.transpose(1, 2).contiguous().transpose(1, 2)


@needs_compiler
def test_the_kernel_builds_here_and_auto_picks_it_on_a_cpu() -> None:
    assert cpu_lora.available()
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_backend_matches_reference(layout: str, shape: str, dtype: torch.dtype) -> None:
    """fp32 and bf16 run the kernel; fp16 and slots with many rows take the torch path."""
    problem = build(Case(layout, shape, dtype), seed=2)
    y = problem.y.clone()
    lora_apply(y, problem.x, problem.lora_a, rank_major(problem.lora_b),
               problem.slice_offsets, problem.segments(), problem.ranks, backend="cpu")
    assert_applied(y, problem, dtype)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_b_pool_that_is_not_rank_major_takes_the_torch_path(dtype: torch.dtype) -> None:
    problem = build(Case("decode_shuffled", "qkv_gqa", dtype), seed=3)
    assert not cpu_lora.supports(problem.x, problem.lora_a, problem.lora_b)
    y = problem.y.clone()
    lora_apply(y, problem.x, problem.lora_a, problem.lora_b, problem.slice_offsets,
               problem.segments(), problem.ranks, backend="cpu")
    assert_applied(y, problem, dtype)


@needs_compiler
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_decode_rows_spread_over_threads(threads: int) -> None:
    """Every slot of a 40-row batch its own work item; any thread count, same result."""
    token_slots = [row % len(RANKS) for row in range(40)]
    indptr, slots = segments_of(token_slots)
    problem = make_problem(d_in=67, slice_widths=[33, 17, 17], ranks=RANKS, max_rank=MAX_RANK,
                           indptr=indptr, slots=slots, dtype=torch.float32, seed=4)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = problem.y.clone()
        lora_apply(y, problem.x, problem.lora_a, rank_major(problem.lora_b),
                   problem.slice_offsets, problem.segments(), problem.ranks, backend="cpu")
    finally:
        torch.set_num_threads(before)
    assert_applied(y, problem, torch.float32)


@needs_compiler
def test_the_step_plan_splits_prefill_slots_from_decode_items() -> None:
    """A slot of more than KERNEL_ROWS rows takes torch's matmuls; a slot of fewer but more
    than ITEM_ROWS is several items, so one adapter under a whole batch spreads over the
    threads."""
    prefill = cpu_lora.KERNEL_ROWS + 6
    token_slots = [2] * prefill + [1] * 20 + [0, 5, 5, 7, -1]
    indptr, slots = segments_of(token_slots)
    problem = make_problem(d_in=67, slice_widths=[97], ranks=RANKS, max_rank=MAX_RANK,
                           indptr=indptr, slots=slots, dtype=torch.float32, seed=5)
    plan = cpu_lora.native_plan(problem.segments(), RANKS, MAX_RANK)
    assert [item.slot for item in plan.direct] == [2]
    assert cpu_lora.ITEM_ROWS == 8
    # (slot, rank, start in rows, row count) per item, largest first; rows by slot
    assert plan.items.t().tolist() == [[1, 20, 0, 8], [1, 20, 8, 8], [1, 20, 16, 4],
                                       [5, 5, 21, 2], [7, 5, 23, 1], [0, 1, 20, 1]]
    assert plan.rows.tolist() == list(range(prefill, prefill + 24))
    y = problem.y.clone()
    lora_apply(y, problem.x, problem.lora_a, rank_major(problem.lora_b),
               problem.slice_offsets, problem.segments(), problem.ranks, backend="cpu")
    assert_applied(y, problem, torch.float32)


def stacked_layers(dtype: torch.dtype, layers: int = 3) -> list:
    """Problems with one batch and one slot table but each its own weights: a model's layers."""
    # a prefill slot (torch's matmuls) and decode rows (the kernel's items)
    token_slots = [2] * (cpu_lora.KERNEL_ROWS + 1) + [0, 5, 5, 7, -1, 3]
    indptr, slots = segments_of(token_slots)
    return [make_problem(d_in=67, slice_widths=[33, 17, 17], ranks=RANKS, max_rank=MAX_RANK,
                         indptr=indptr, slots=slots, dtype=dtype, seed=10 + layer)
            for layer in range(layers)]


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_a_group_bound_once_applies_every_layer_of_the_stacked_pools(dtype: torch.dtype) -> None:
    problems = stacked_layers(dtype)
    lora_a = torch.stack([problem.lora_a for problem in problems])  # [L, S, n, R, d_in]
    lora_b = torch.stack([problem.lora_b for problem in problems])  # [L, S, d_out, R]
    lora_b = lora_b.transpose(2, 3).contiguous().transpose(2, 3)
    bound = cpu_lora.bind(lora_a, lora_b, problems[0].slice_offsets, problems[0].segments(),
                          problems[0].ranks, problems[0].rank_list)
    assert bound is not None and bound.plan.direct and bound.plan.num_items
    for layer in reversed(range(len(problems))):
        y = problems[layer].y.clone()
        bound.apply(y, problems[layer].x, layer)
        assert_applied(y, problems[layer], dtype)


@needs_compiler
def test_a_bound_group_refuses_what_does_not_fit_it_and_leaves_y_alone() -> None:
    problem = stacked_layers(torch.float32, layers=1)[0]
    bound = cpu_lora.bind(problem.lora_a[None], rank_major(problem.lora_b)[None],
                          problem.slice_offsets, problem.segments(), problem.ranks,
                          problem.rank_list)
    assert bound is not None
    y = problem.y.clone()
    with pytest.raises(IndexError, match="layer 1"):
        bound.apply(y, problem.x, 1)
    with pytest.raises(ValueError, match="must be"):
        bound.apply(y, problem.x[:-1], 0)  # one row short
    with pytest.raises(ValueError, match="must be"):
        bound.apply(y, problem.x.to(torch.bfloat16), 0)
    with pytest.raises(ValueError, match="must be"):
        bound.apply(y, problem.x.t().contiguous().t(), 0)  # columns not contiguous
    assert torch.equal(y, problem.y)
    # a pool the kernel does not read (B not rank-major) is not bound: the torch path runs
    assert cpu_lora.bind(problem.lora_a[None], problem.lora_b[None], problem.slice_offsets,
                         problem.segments(), problem.ranks, problem.rank_list) is None


def test_a_machine_without_a_working_compiler_serves_with_the_torch_ops(tmp_path: Path) -> None:
    """A broken compiler: a warning, `auto` resolves to torch, and LoRA still applies."""
    script = (
        "import torch\n"
        "from loraplex.runtime.kernels import cpu_lora, resolve_backend\n"
        "print(cpu_lora.available(), resolve_backend('auto', torch.device('cpu')))\n"
    )
    result = run_without_a_compiler(script, tmp_path)
    assert result.stdout.split() == ["False", "torch"]
    assert "compiled CPU kernel cpu_lora is unavailable" in result.stderr
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_the_cpu_backend_refuses_another_device() -> None:
    with pytest.raises(ValueError, match="runs on a CPU"):
        resolve_backend("cpu", torch.device("meta"))
