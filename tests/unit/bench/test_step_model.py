"""The step cost model counts what the code does: a matmul's and the attention kernel's
counted bytes and FLOPs equal their formulas, and a whole step of the real runner is
counted (at tiny-llama shapes, so it runs in seconds)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from bench import step_model
from bench.step_counter import StepCounter

pytest.importorskip("triton")

META = torch.device("meta")


def test_a_matmul_is_counted_by_its_formula():
    rows, d_in, d_out = 64, 4096, 6144
    x = torch.empty(rows, d_in, dtype=torch.bfloat16, device=META)
    weight = torch.empty(d_out, d_in, dtype=torch.bfloat16, device=META)
    with torch.inference_mode(), StepCounter() as counter:
        torch.nn.functional.linear(x, weight)

    [op] = counter.ops
    assert op.read == 2 * (rows * d_in + d_out * d_in)
    assert op.written == 2 * rows * d_out
    assert op.flops == 2 * rows * d_in * d_out
    assert op.launches == 1 and op.syncs == 0


def test_the_decode_attention_kernel_is_counted_by_its_formula():
    from loraplex.runtime.kernels.paged_attention import paged_decode

    seqs, heads, kv_heads, head_dim, block_size, width = 64, 32, 8, 128, 16, 128
    query = torch.empty(seqs, heads, head_dim, dtype=torch.bfloat16, device=META)
    cache = torch.empty(seqs * width, block_size, kv_heads, head_dim, dtype=torch.bfloat16,
                        device=META)
    tables = torch.empty(seqs, width, dtype=torch.int32, device=META)
    lengths = torch.empty(seqs, dtype=torch.int32, device=META)
    with torch.inference_mode(), StepCounter() as counter:
        paged_decode(query, cache, cache, tables, lengths, head_dim**-0.5, num_splits=1)

    [op] = [op for op in counter.ops if op.kind == "attention"]
    keys = seqs * width * block_size
    assert op.read == (2 * keys * kv_heads * head_dim * 2  # K and V, bf16
                       + seqs * heads * head_dim * 2 + seqs * width * 4)  # query, tables
    assert op.written == seqs * heads * head_dim * 2
    assert op.flops == 4 * keys * heads * head_dim
    assert op.launches == 1


def test_a_decode_step_of_the_real_runner_is_counted(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["step_model", "--model", "tiny-llama", "--batch", "4",
                                      "--context", "40", "--adapters", "2", "--rank", "8",
                                      "--json"])
    step_model.main()
    result = json.loads(capsys.readouterr().out)

    assert result["modelled_ms"] > result["ideal_ms"] > 0
    assert result["launches_per_layer"] >= 10
    assert result["syncs"] >= 1  # the sampled ids come back to the host
    classes = result["per_class"]
    assert classes["attention"]["launches"] > 0 and classes["lora"]["launches"] > 0
    assert classes["linears"]["flops"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_8b_decode_step_meets_the_goal():
    """Batch 64 at 2k context with 32 rank-16 adapters: at most 1.3x the ideal step and
    24 launches per decoder layer."""
    cost = step_model.step_cost("llama-3-8b", 64, 2048, 1, 32, 16)

    assert cost.modelled_ms <= 1.3 * cost.ideal_ms
    assert cost.launches_per_layer <= 24


def test_quantized_weights_are_read_at_their_own_width():
    """A Llama-3-8B decode step at batch 1: int4 decoder linears are read at half a byte
    per weight plus their group tables (the LM head stays bf16), int8 at one byte, and
    both count the same FLOPs as bf16."""
    costs = {quantize: step_model.step_cost("llama-3-8b", 1, 32, 1, 0, 16, quantize, 128)
             for quantize in ("none", "int8", "int4")}
    linears = {quantize: cost.per_class["linears"] for quantize, cost in costs.items()}
    lm_head = 128256 * 4096 * 2
    decoder = {quantize: row["read_bytes"] - lm_head for quantize, row in linears.items()}
    # per weight: codes 0.5 byte, a bf16 scale and zero per 128: 4 / 128 byte; bf16: 2 bytes
    assert 0.25 < decoder["int4"] / decoder["none"] < (0.5 + 4 / 128) / 2 + 0.001
    assert 0.5 < decoder["int8"] / decoder["none"] < 0.51
    assert linears["int4"]["flops"] == linears["int8"]["flops"] == linears["none"]["flops"]
    assert costs["int4"].ideal_ms < costs["int8"].ideal_ms < costs["none"].ideal_ms
