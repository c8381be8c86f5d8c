"""Bad arguments are refused with a ValueError that names the problem, and change nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from loraplex.runtime.kernels import lora_apply
from loraplex.runtime.kernels.segments import LoraSegments
from tests.kernels.backends import TorchBackend
from tests.kernels.problems import LoraProblem
from tests.kernels.test_lora_ops import Case, build

Args = dict


def _strided_last_dim(tensor: torch.Tensor) -> torch.Tensor:
    """Same shape and values, but not contiguous (every other element of a wider tensor)."""
    wide = torch.stack([tensor, tensor], dim=-1).flatten(-2)
    return wide[..., ::2]


BAD_ARGS: dict[str, tuple[Callable[[Args], None], str]] = {
    "x_not_2d": (lambda a: a.update(x=a["x"][None]), "x must be 2-D"),
    "x_integer": (lambda a: a.update(x=a["x"].to(torch.int32)), "float16, bfloat16 or float32"),
    "x_strided_features": (lambda a: a.update(x=_strided_last_dim(a["x"])), "contiguous rows"),
    "x_wrong_d_in": (lambda a: a.update(x=a["x"][:, :-1]), "d_in"),
    "lora_a_3d": (lambda a: a.update(lora_a=a["lora_a"][0]), "lora_a must be"),
    "lora_a_dtype": (lambda a: a.update(lora_a=a["lora_a"].half()), "lora_a is torch.float16"),
    "lora_a_strided": (
        lambda a: a.update(lora_a=_strided_last_dim(a["lora_a"])),
        "lora_a must be contiguous",
    ),
    "lora_b_strided": (
        lambda a: a.update(lora_b=_strided_last_dim(a["lora_b"])),
        "lora_b must be contiguous, or a transposed view",
    ),
    "lora_b_d_out": (lambda a: a.update(lora_b=a["lora_b"][:, :-1].contiguous()), "d_out_total"),
    "lora_b_rank": (lambda a: a.update(lora_b=a["lora_b"][..., :-1].contiguous()), "R="),
    "lora_b_slots": (
        lambda a: a.update(lora_b=a["lora_b"][:-1].contiguous()),
        "lora_b has 7 slots but ranks has 8",
    ),
    "y_rows": (lambda a: a.update(y=a["y"][:-1]), "rows"),
    "y_dtype": (lambda a: a.update(y=a["y"].half()), "but y is torch.float16"),
    "ranks_int64": (lambda a: a.update(ranks=a["ranks"].long()), "ranks must be int32"),
    "ranks_length": (lambda a: a.update(ranks=a["ranks"][:-1]), "has 8 slots but ranks has 7"),
    "segments_rows": (
        lambda a: a.update(segments=LoraSegments.from_token_slots([0] * 50)),
        "segments cover 50 rows",
    ),
    "segments_slot": (
        lambda a: a.update(segments=LoraSegments.from_token_slots([8] * a["x"].shape[0])),
        "slot 8",
    ),
    "slice_offsets_count": (
        lambda a: a.update(slice_offsets=a["slice_offsets"][:-1]),
        "slice_offsets needs 4 entries",
    ),
    "slice_offsets_total": (
        lambda a: a.update(slice_offsets=[*a["slice_offsets"][:-1], 5]),
        "run from 0 to d_out_total",
    ),
    "slice_offsets_order": (
        lambda a: a.update(slice_offsets=[0, 40, 30, a["slice_offsets"][-1]]),
        "must not decrease",
    ),
}


def lora_args(problem: LoraProblem) -> Args:
    return dict(
        y=problem.y.clone(),
        x=problem.x,
        lora_a=problem.lora_a,
        lora_b=problem.lora_b,
        slice_offsets=problem.slice_offsets,
        segments=problem.segments(),
        ranks=problem.ranks,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bad", BAD_ARGS)
def test_lora_apply_refuses_bad_args_and_leaves_y_alone(backend, bad: str) -> None:
    problem = build(Case("decode_shuffled", "qkv_gqa", torch.float32))
    args = lora_args(problem)
    mutate, message = BAD_ARGS[bad]
    mutate(args)
    y_before = args["y"].clone()

    with pytest.raises(ValueError, match=message):
        backend.lora_apply(**args)

    assert torch.equal(args["y"], y_before)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("float16", "v must be a contiguous float32"),
        ("wrong_rank_dim", "v must be"),
        ("wrong_rows", "v must be"),
    ],
)
def test_expand_refuses_bad_v(backend, bad: str, message: str) -> None:
    problem = build(Case("one_adapter", "o", torch.float32))
    v = torch.zeros(problem.x.shape[0], 1, problem.lora_a.shape[2])
    v = {
        "float16": v.half(),
        "wrong_rank_dim": v[..., :-1].contiguous(),
        "wrong_rows": v[:-1].contiguous(),
    }[bad]
    y = problem.y.clone()

    with pytest.raises(ValueError, match=message):
        backend.expand(
            y, v, problem.lora_b, problem.slice_offsets, problem.segments(), problem.ranks
        )
    assert torch.equal(y, problem.y)


@pytest.mark.timeout(120)
def test_shrink_refuses_mismatched_pool(backend) -> None:
    problem = build(Case("one_adapter", "o", torch.float32))
    with pytest.raises(ValueError, match="d_in"):
        backend.shrink(problem.x[:, :-1], problem.lora_a, problem.segments(), problem.ranks)


def test_torch_path_refuses_ranks_outside_the_pool() -> None:
    problem = build(Case("one_adapter", "o", torch.float32))
    args = lora_args(problem)
    slot = problem.token_slots[0]
    args["ranks"] = problem.ranks.clone()
    args["ranks"][slot] = problem.lora_a.shape[2] + 1

    with pytest.raises(ValueError, match=r"ranks must be in \[0, R=20\]"):
        TorchBackend().lora_apply(**args)
    assert torch.equal(args["y"], problem.y)


def test_unknown_backend_is_refused() -> None:
    problem = build(Case("one_adapter", "o", torch.float32))
    with pytest.raises(ValueError, match="backend must be one of"):
        lora_apply(**lora_args(problem), backend="cuda")
