"""The formats as the quantization tools themselves write and read them.

AutoGPTQ's `QuantLinear` packs a linear (its v1 format, `desc_act` g_idx included) and
multiplies with it on the CPU by dequantizing in torch; AutoAWQ's `dequantize_gemm` reads
the GEMM layout. Neither installs from the lock (AutoGPTQ builds CUDA extensions from
source, AutoAWQ pins another transformers), so these tests run where they were installed
by hand (`pip install --no-deps auto-gptq autoawq`) and are skipped elsewhere; the
format tests beside them hold the same layouts written from their descriptions. Only the
tools' pure-torch modules are loaded (their packages' `__init__` imports datasets).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from loraplex.runtime.layers.quantized import kernel_dtype
from loraplex.runtime.models.awq import read_awq
from loraplex.runtime.models.gptq import read_gptq
from loraplex.runtime.models.int4_codes import serve_codes
from tests.helpers.quantized_checkpoints import pack_awq, random_codes, random_groups


def tool_module(package: str, relative: str) -> ModuleType:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pytest.skip(f"{package} is not installed")
    path = Path(spec.origin).parent / relative
    module_spec = importlib.util.spec_from_file_location(f"_tool_{package}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("desc_act", [False, True])
def test_autogptq_packed_linear_is_served_as_autogptq_computes_it(desc_act) -> None:
    quant_linear = tool_module("auto_gptq", "nn_modules/qlinear/qlinear_cuda.py").QuantLinear
    generator = torch.Generator().manual_seed(4)
    in_features, out_features, group_size = 256, 64, 64
    groups = random_groups(in_features, group_size, desc_act, generator)
    codes = random_codes(out_features, groups, False, (1, 15), generator)
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    linear.weight.data = codes.weight()  # exactly on the grid
    tool = quant_linear(4, group_size, in_features, out_features, bias=False,
                        weight_dtype=torch.float32)
    # the tool takes [N, G] scales and zero points, and the g_idx
    tool.pack(linear, codes.scales.float().t(), codes.zeros.t().clone(), groups.to(torch.int32))
    tensors = {"qweight": tool.qweight, "qzeros": tool.qzeros, "scales": tool.scales.half(),
               "g_idx": tool.g_idx}
    served = serve_codes([read_gptq("tool", tensors, group_size, "gptq")], group_size,
                         torch.float32)
    x = torch.randn(6, in_features, generator=generator)
    served_dtype = kernel_dtype(torch.device("cpu"), x.dtype)  # bf16: the CPU kernel's
    with torch.no_grad():
        expected = tool(x.to(served_dtype).float())  # the activations as the kernel reads them
    error = (served.linear(x) - expected).abs().max() / expected.abs().max()
    assert error < (1e-2 if served_dtype == torch.bfloat16 else 1e-4), error
    torch.testing.assert_close(served.dequantize(), codes.weight(), rtol=0, atol=1e-6)


def test_autoawq_reads_the_gemm_layout_as_the_loader_does() -> None:
    packing = tool_module("awq", "utils/packing_utils.py")
    generator = torch.Generator().manual_seed(6)
    codes = random_codes(64, random_groups(256, 64, False, generator), False, (0, 15),
                         generator)
    tensors = pack_awq(codes)
    tool_weight = packing.dequantize_gemm(tensors["qweight"], tensors["qzeros"],
                                          tensors["scales"].float(), 4, 64)  # [K, N]
    torch.testing.assert_close(tool_weight.t(), codes.weight(), rtol=0, atol=1e-6)
    served = serve_codes([read_awq("tool", tensors, 64)], 64, torch.float32)
    torch.testing.assert_close(served.dequantize(), tool_weight.t(), rtol=0, atol=1e-6)
