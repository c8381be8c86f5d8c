"""Paged attention (Triton under the interpreter, and the torch CPU path) against fp64.

The full matrix (GQA ratio x head dim x block size x dtype x split-KV) has 72 decode and
36 prefill cases; the interpreter is slow, so a fixed sample that holds every value of
every axis runs here (`test_sample_covers_every_value` keeps it so). Every problem has
ragged lengths (1, mid-block, block boundary), shuffled blocks shared by nobody, table
padding and unused blocks full of NaN (see `attention_problems`). The reference runs in
fp64 on the inputs rounded to the tested dtype, so only the kernel's own error counts.
"""

from __future__ import annotations

import itertools
import random
import shutil

import pytest
import torch

from loraplex.runtime.kernels import attention_reference, attention_torch, cpu_attention
from tests.kernels import interpreter_worker
from tests.kernels.attention_problems import PagedProblem, paged_problem
from tests.kernels.backends import WORKER_TIMEOUT_S

GQA_RATIOS = (1, 4, 8)
HEAD_DIMS = (64, 128)
BLOCK_SIZES = (16, 32)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SPLITS = (1, 4)
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

DECODE_MATRIX = list(itertools.product(GQA_RATIOS, HEAD_DIMS, BLOCK_SIZES, DTYPES, SPLITS))
PREFILL_MATRIX = list(itertools.product(GQA_RATIOS, HEAD_DIMS, BLOCK_SIZES, DTYPES))
DECODE_CASES = random.Random(12).sample(DECODE_MATRIX, 12)
PREFILL_CASES = random.Random(12).sample(PREFILL_MATRIX, 8)


def test_sample_covers_every_value():
    axes = (GQA_RATIOS, HEAD_DIMS, BLOCK_SIZES, DTYPES, SPLITS)
    for cases in (DECODE_CASES, PREFILL_CASES):
        for axis, values in enumerate(axes[:len(cases[0])]):
            assert {case[axis] for case in cases} == set(values)


def decode_problem(gqa: int, head_dim: int, block_size: int) -> PagedProblem:
    generator = torch.Generator().manual_seed(gqa * 1000 + head_dim + block_size)
    lengths = [1, block_size, block_size + 5, 3 * block_size - 1, 70]
    return paged_problem(lengths, None, 2 * gqa, 2, head_dim, block_size, generator)


def prefill_problem(gqa: int, head_dim: int, block_size: int) -> PagedProblem:
    generator = torch.Generator().manual_seed(gqa * 1000 + head_dim + block_size + 1)
    # (context, chunk): a fresh prompt, a 1-token chunk, continuations over a prefix
    spans = [(block_size + 3, block_size + 3), (9, 1), (2 * block_size + 7, 21), (80, 37)]
    return paged_problem([c for c, _ in spans], [q for _, q in spans], 2 * gqa, 2,
                         head_dim, block_size, generator)


def expected_decode(problem: PagedProblem, dtype: torch.dtype) -> torch.Tensor:
    rounded = problem.cast(dtype).cast(torch.float64)
    return attention_reference.decode_reference(
        rounded.query, rounded.key_cache, rounded.value_cache, rounded.block_tables,
        rounded.seq_lens, rounded.scale)


def expected_prefill(problem: PagedProblem, dtype: torch.dtype) -> torch.Tensor:
    rounded = problem.cast(dtype).cast(torch.float64)
    return attention_reference.prefill_reference(
        rounded.query, rounded.key_cache, rounded.value_cache, rounded.block_tables,
        rounded.query_starts, rounded.query_lens, rounded.seq_lens, rounded.scale)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype
    assert torch.isfinite(got).all()
    error = (got.double() - want).abs().max().item()
    assert error <= TOLERANCE[dtype], f"max error {error:.2e}"


@pytest.mark.parametrize(("gqa", "head_dim", "block_size", "dtype", "splits"), DECODE_CASES)
def test_triton_decode_matches_fp64(interpreter_executor, gqa, head_dim, block_size, dtype,
                                    splits):
    problem = decode_problem(gqa, head_dim, block_size)
    case = problem.cast(dtype)
    got = interpreter_executor.submit(
        interpreter_worker.paged_decode, case.query, case.key_cache, case.value_cache,
        case.block_tables, case.seq_lens, case.scale, splits).result(WORKER_TIMEOUT_S)
    assert_close(got, expected_decode(problem, dtype), dtype)


@pytest.mark.parametrize(("gqa", "head_dim", "block_size", "dtype"), PREFILL_CASES)
def test_triton_prefill_matches_fp64(interpreter_executor, gqa, head_dim, block_size, dtype):
    problem = prefill_problem(gqa, head_dim, block_size)
    case = problem.cast(dtype)
    got = interpreter_executor.submit(
        interpreter_worker.paged_prefill, case.query, case.key_cache, case.value_cache,
        case.block_tables, case.query_starts, case.query_lens, case.seq_lens,
        int(case.query_lens.max()), case.scale).result(WORKER_TIMEOUT_S)
    assert_close(got, expected_prefill(problem, dtype), dtype)


@pytest.mark.parametrize("native", [True, False], ids=["compiled_decode", "torch_decode"])
@pytest.mark.parametrize(("gqa", "head_dim", "block_size", "dtype"), PREFILL_MATRIX)
def test_torch_path_matches_fp64(gqa, head_dim, block_size, dtype, native):
    """The CPU path: decode by the compiled kernel (fp32, bf16) or the torch ops."""
    decode = decode_problem(gqa, head_dim, block_size)
    case = decode.cast(dtype)
    plan = attention_torch.decode_plan(case.query, case.key_cache, case.block_tables,
                                       case.seq_lens.tolist(), native=native)
    compiled = native and dtype in cpu_attention.ENTRY_POINTS and shutil.which("cc")
    assert (plan.native is not None) == bool(compiled)
    got = attention_torch.paged_decode(case.query, case.key_cache, case.value_cache,
                                       case.block_tables, case.seq_lens, case.scale,
                                       plan=plan)
    assert_close(got, expected_decode(decode, dtype), dtype)
    prefill = prefill_problem(gqa, head_dim, block_size)
    case = prefill.cast(dtype)
    got = attention_torch.paged_prefill(
        case.query, case.key_cache, case.value_cache, case.block_tables, case.query_starts,
        case.query_lens, case.seq_lens, int(case.query_lens.max()), case.scale)
    assert_close(got, expected_prefill(prefill, dtype), dtype)


@pytest.mark.skipif(cpu_attention._library() is None, reason="no C compiler")
@pytest.mark.parametrize("dtype", sorted(cpu_attention.ENTRY_POINTS, key=str))
@pytest.mark.parametrize(("gqa", "head_dim"), [(1, 16), (3, 80), (8, 256), (4, 40), (2, 272)])
def test_compiled_decode_at_every_head_size(gqa, head_dim, dtype):
    """Head sizes other than the constants 64 and 128: multiples of 16 up to 256 on the
    vector path (a one-vector head, an odd count of vectors, the largest), others on the
    scalar loops; every GQA group size reads its shared KV head."""
    problem = decode_problem(gqa, head_dim, 16)
    case = problem.cast(dtype)
    plan = attention_torch.decode_plan(case.query, case.key_cache, case.block_tables,
                                       case.seq_lens.tolist(), native=True)
    assert plan.native is not None
    got = attention_torch.paged_decode(case.query, case.key_cache, case.value_cache,
                                       case.block_tables, case.seq_lens, case.scale,
                                       plan=plan)
    assert_close(got, expected_decode(problem, dtype), dtype)


def test_compiled_decode_keeps_long_contexts_exact():
    """Thousands of positions over many blocks: the running maximum and the sums of a long
    softmax, with one key far above the rest (its weight near 1) in a middle block."""
    generator = torch.Generator().manual_seed(5)
    problem = paged_problem([3000, 1, 2049], None, 8, 2, 64, 16, generator)
    seq0_blocks = problem.block_tables[0].long()
    problem.key_cache[seq0_blocks[93], 7] = problem.query[0, :4].mean(0) * 40  # one spike
    case = problem.cast(torch.float32)
    plan = attention_torch.decode_plan(case.query, case.key_cache, case.block_tables,
                                       case.seq_lens.tolist(), native=True)
    got = attention_torch.paged_decode(case.query, case.key_cache, case.value_cache,
                                       case.block_tables, case.seq_lens, case.scale,
                                       plan=plan)
    assert_close(got, expected_decode(problem, torch.float32), torch.float32)


def test_torch_prefill_slices_long_chunks(monkeypatch):
    """A chunk longer than QUERY_SLICE over a prefix is attended slice by slice."""
    monkeypatch.setattr(attention_torch, "QUERY_SLICE", 8)
    problem = prefill_problem(4, 64, 16)
    case = problem.cast(torch.float32)
    got = attention_torch.paged_prefill(
        case.query, case.key_cache, case.value_cache, case.block_tables, case.query_starts,
        case.query_lens, case.seq_lens, 37, case.scale)
    assert_close(got, expected_prefill(problem, torch.float32), torch.float32)


def test_bad_arguments_are_refused_by_name():
    problem = decode_problem(4, 64, 16).cast(torch.float32)
    with pytest.raises(ValueError, match="seq_lens"):
        attention_torch.paged_decode(problem.query, problem.key_cache, problem.value_cache,
                                     problem.block_tables, problem.seq_lens[:2], problem.scale)
    with pytest.raises(ValueError, match="KV heads"):
        attention_torch.paged_decode(problem.query[:, :3], problem.key_cache,
                                     problem.value_cache, problem.block_tables,
                                     problem.seq_lens, problem.scale)
    with pytest.raises(ValueError, match="value_cache"):
        attention_torch.paged_decode(problem.query, problem.key_cache,
                                     problem.value_cache.half(), problem.block_tables,
                                     problem.seq_lens, problem.scale)
    with pytest.raises(ValueError, match="block_tables"):
        attention_torch.paged_decode(problem.query, problem.key_cache, problem.value_cache,
                                     problem.block_tables.float(), problem.seq_lens,
                                     problem.scale)
