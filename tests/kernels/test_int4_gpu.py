"""The compiled int4 dequantize-GEMM on a GPU, at Llama-3-8B shapes, in bf16.

Skipped without CUDA (`bench/gpu_check.sh` runs it on a GPU machine): the interpreter
tests (`test_int4_gemm.py`) check the kernel's logic on small shapes; these check the
compiled code at the tile sizes the launcher picks for decode and prefill, the split-K
atomics at full width, that a decode-step product replays in a CUDA graph, and that NF4
codes read through their codebook.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.layers.codebook import CodebookWeight
from loraplex.runtime.layers.quantized import Int4Weight

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]

LLAMA3_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
             "down": (4096, 14336)}  # (d_out, d_in)
BF16_TOLERANCE = 2e-2  # relative to the output's largest magnitude


def quantized(name: str, group_size: int) -> Int4Weight:
    d_out, d_in = LLAMA3_8B[name]
    generator = torch.Generator(device="cuda").manual_seed(d_out + group_size)
    weight = torch.randn(d_out, d_in, generator=generator, device="cuda") * d_in**-0.5
    int4 = Int4Weight.quantize(weight.to(torch.bfloat16), group_size)
    assert int4.kernel == "triton"  # what a CUDA device gets by default
    return int4


def assert_matches(y: torch.Tensor, x: torch.Tensor,
                   weight: Int4Weight | CodebookWeight) -> None:
    expected = x.double() @ weight.dequantize().double().t()
    scale = expected.abs().max().item()
    assert y.dtype == x.dtype and y.shape == expected.shape
    assert (y.double() - expected).abs().max().item() <= BF16_TOLERANCE * scale


@pytest.mark.parametrize("rows", [1, 33, 1000])  # split decode, 64-row tiles, prefill
@pytest.mark.parametrize("name", LLAMA3_8B)
def test_compiled_kernel_matches_the_dequantized_weight(name: str, rows: int) -> None:
    weight = quantized(name, 128)
    x = torch.randn(rows, weight.in_features, device="cuda", dtype=torch.bfloat16)
    assert_matches(weight.linear(x), x, weight)


@pytest.mark.parametrize("group_size", [32, 64, 256])
def test_every_group_size_on_the_down_projection(group_size: int) -> None:
    weight = quantized("down", group_size)
    for rows in (3, 300):
        x = torch.randn(rows, weight.in_features, device="cuda", dtype=torch.bfloat16)
        assert_matches(weight.linear(x), x, weight)


def test_a_decode_product_replays_in_a_cuda_graph() -> None:
    weight = quantized("qkv", 128)
    x = torch.randn(8, weight.in_features, device="cuda", dtype=torch.bfloat16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        weight.linear(x)  # warm up: compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = weight.linear(x)

    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(y, x, weight)


@pytest.mark.parametrize("rows", [1, 33, 1000])
@pytest.mark.parametrize("name", ["qkv", "down"])
def test_nf4_reads_its_codebook_in_the_compiled_kernel(name: str, rows: int) -> None:
    d_out, d_in = LLAMA3_8B[name]
    weight = torch.randn(d_out, d_in, device="cuda") * d_in**-0.5
    nf4 = CodebookWeight.quantize_nf4(weight.to(torch.bfloat16))
    assert nf4.kernel == "triton"  # what a CUDA device gets by default
    x = torch.randn(rows, d_in, device="cuda", dtype=torch.bfloat16)
    assert_matches(nf4.linear(x), x, nf4)
