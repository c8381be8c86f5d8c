"""The compiled fp32 linear (`cpu_linear`) against an fp64 product, and the layer that uses it;
the gate|up product with its SiLU gate against the same in fp64, and the MLP that uses it.

Row counts cover one tile (1, 5, 12), split tiles (13, 16, 17, 40) and more than one pass of
256 rows (300); output widths a whole panel, a partial last panel and the model's q|k|v;
inputs whose rows are a slice of a wider tensor.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.layers.forward_batch import ForwardBatch
from loraplex.runtime.layers.linear import Linear
from loraplex.runtime.models.llama import MLP
from tests.kernels.no_compiler import run_without_a_compiler

pytestmark = pytest.mark.skipif(cpu_linear._library() is None,
                                reason="no C compiler or no 512-bit vectors")

ROWS = (1, 5, 12, 13, 16, 17, 40, 300)
SHAPES = ((32, 7), (45, 576), (960, 576), (33, 1))  # (out, in)


def problem(rows: int, out_features: int, in_features: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed + rows * 7 + out_features)
    weight = torch.randn(out_features, in_features, generator=generator) / in_features**0.5
    bias = torch.randn(out_features, generator=generator)
    x = torch.randn(rows, in_features + 3, generator=generator)[:, 2:2 + in_features]
    return x, weight, bias


def expected(x, weight, bias):
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
@pytest.mark.parametrize("rows", ROWS)
def test_kernel_matches_fp64(rows, out_features, in_features, with_bias):
    x, weight, bias = problem(rows, out_features, in_features)
    bias = bias if with_bias else None
    assert x.stride(0) == in_features + 3  # rows read in place at their own stride
    got = cpu_linear.linear(x, cpu_linear.pack(weight), out_features, bias)
    assert got.shape == (rows, out_features) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected(x, weight, bias), rtol=1e-5, atol=2e-5)


def expected_gated(x, weight, intermediate):
    gate_up = expected(x, weight, None)
    return F.silu(gate_up[:, :intermediate]) * gate_up[:, intermediate:]


@pytest.mark.parametrize(("intermediate", "in_features"), ((32, 7), (64, 576), (1536, 576)))
@pytest.mark.parametrize("rows", ROWS)
def test_gated_kernel_matches_fp64(rows, intermediate, in_features):
    x, weight, _ = problem(rows, 2 * intermediate, in_features)
    got = cpu_linear.linear_silu_and_mul(x, cpu_linear.pack(weight), intermediate)
    assert got.shape == (rows, intermediate) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected_gated(x, weight, intermediate),
                               rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("rows", (1, 16, 300))
def test_gated_kernel_gates_as_torch_does_where_the_exponential_overflows(rows):
    """Gates of +-hundreds: the gated product equals F.silu(gate) * up over the plain
    kernel's gate|up (the same fp32 sums), to the exponential's last bits."""
    x, weight, _ = problem(rows, 128, 576)
    weight[:64] *= 400
    panels = cpu_linear.pack(weight)
    gate_up = cpu_linear.linear(x, panels, 128, None)
    assert gate_up[:, :64].min() < -88  # exp(-gate) overflows fp32
    got = cpu_linear.linear_silu_and_mul(x, panels, 64)
    torch.testing.assert_close(got, F.silu(gate_up[:, :64]) * gate_up[:, 64:], rtol=4e-7,
                               atol=1e-30)


def test_gated_product_refuses_what_it_cannot_split():
    x, weight, _ = problem(4, 90, 576)
    with pytest.raises(ValueError, match="gate|up panels of two multiples of 32"):
        cpu_linear.linear_silu_and_mul(x, cpu_linear.pack(weight), 45)
    x, weight, _ = problem(4, 128, 576)
    with pytest.raises(ValueError, match="gate|up panels"):
        cpu_linear.linear_silu_and_mul(x, cpu_linear.pack(weight), 32)  # not the half
    with pytest.raises(ValueError, match="fp32 CPU rows of 576"):
        cpu_linear.linear_silu_and_mul(x[:, :100], cpu_linear.pack(weight), 64)
    assert cpu_linear.linear_silu_and_mul(x[:0], cpu_linear.pack(weight), 64).shape == (0, 64)


def test_mlp_takes_the_gate_in_its_linear_in_a_base_step(monkeypatch):
    """A base step's MLP gates in its gate|up call and equals the separate ops (an unpacked
    MLP); with a bias it keeps them. Steps with adapters keep them too (a LoRA delta is added
    before the gate): the PEFT tests hold those to PEFT's tokens."""
    config = SimpleNamespace(hidden_size=576, intermediate_size=64)
    mlp = MLP(config, 0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for linear in (mlp.gate_up_proj, mlp.down_proj):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) / 24)
    hidden = torch.randn(16, 576, generator=generator)
    empty = torch.zeros(16, dtype=torch.int64)
    base = ForwardBatch(input_ids=empty, positions=empty, slot_mapping=empty, decode=None,
                        prefill=None)
    separate = mlp(hidden, base)
    mlp.gate_up_proj.pack()
    mlp.down_proj.pack()
    assert mlp.gates_in_linear
    calls = []
    gated = cpu_linear.linear_silu_and_mul
    monkeypatch.setattr(cpu_linear, "linear_silu_and_mul",
                        lambda *args: calls.append(args[0].shape) or gated(*args))
    torch.testing.assert_close(mlp(hidden, base), separate, rtol=1e-5, atol=2e-5)
    assert calls == [(16, 576)]
    with_bias = MLP(SimpleNamespace(**vars(config), mlp_bias=True), 0)
    with_bias.gate_up_proj.pack()
    assert with_bias.gate_up_proj.packed_panels and not with_bias.gates_in_linear


def test_panels_hold_the_weight_transposed_and_padded():
    weight = torch.arange(45 * 3, dtype=torch.float32).view(45, 3)
    panels = cpu_linear.pack(weight)
    assert panels.shape == (2, 3, 32)
    assert torch.equal(panels[0], weight[:32].t())
    assert torch.equal(panels[1, :, :13], weight[32:].t())
    assert not panels[1, :, 13:].any()


def test_leading_dimensions_and_empty_inputs():
    x, weight, bias = problem(12, 45, 576)
    panels = cpu_linear.pack(weight)
    batched = cpu_linear.linear(x.reshape(3, 4, 576), panels, 45, bias)
    assert torch.equal(batched.reshape(12, 45), cpu_linear.linear(x, panels, 45, bias))
    assert cpu_linear.linear(x[:0], panels, 45, bias).shape == (0, 45)


def test_bad_inputs_are_refused_by_name():
    x, weight, bias = problem(4, 45, 576)
    panels = cpu_linear.pack(weight)
    for bad_x, bad_bias in ((x.to(torch.bfloat16), bias), (x[:, :100], bias),
                            (x, bias[:44]), (x, bias.double())):
        with pytest.raises(ValueError, match="cpu_linear takes fp32 CPU rows"):
            cpu_linear.linear(bad_x, panels, 45, bad_bias)
    with pytest.raises(ValueError, match="cpu_linear takes"):
        cpu_linear.linear(x, panels, 65, None)  # wider than the panels hold
    with pytest.raises(ValueError, match="cpu_linear packs fp32"):
        cpu_linear.pack(weight.to(torch.bfloat16))


def test_linear_layers_pack_fp32_into_panels_and_bf16_for_onednn():
    x, weight, bias = problem(16, 960, 576)
    for dtype, panels in ((torch.float32, True), (torch.bfloat16, False)):
        layer = Linear(576, 960, bias=True).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
            want = F.linear(x.to(dtype), layer.weight, layer.bias)
            assert layer.pack()
            layer.release_weight()
            got = layer(x.to(dtype))
        assert layer.packed_panels == panels
        tolerance = 2e-5 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)


def test_a_quantized_layer_leaves_the_panels():
    layer = Linear(64, 96, bias=False)
    assert layer.pack() and layer.packed_panels
    layer.quantize("int8", 32)
    assert not layer.packed_panels and layer.packed_weight is None


def test_a_machine_without_a_compiler_packs_for_onednn(tmp_path):
    script = (
        "import torch\n"
        "from loraplex.runtime.layers.linear import Linear\n"
        "layer = Linear(64, 96, bias=False)\n"
        "x = torch.randn(5, 64)\n"
        "with torch.no_grad():\n"
        "    want = layer(x)\n"
        "    packed = layer.pack()\n"
        "    layer.release_weight()\n"
        "    close = torch.allclose(layer(x), want, atol=1e-5)\n"
        "print(packed, layer.packed_panels, close)\n"
    )
    result = run_without_a_compiler(script, tmp_path)
    assert result.stdout.split() == ["True", "False", "True"]
    assert "compiled CPU kernel cpu_linear is unavailable" in result.stderr
