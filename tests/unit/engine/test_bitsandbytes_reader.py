"""A bitsandbytes linear, as transformers saves it, read back into the weight bitsandbytes holds.

bitsandbytes itself is the oracle: its `quantize_4bit` / `int8_vectorwise_quant` make the
tensors, `QuantState.as_dict(packed=True)` lays them out as `save_pretrained` writes them,
and its `dequantize_4bit` / `int8_vectorwise_dequant` give the weight our reader must
serve. (Its CPU `dequantize_4bit` mishandles blocks that span rows, so those are compared
with the matrix flattened to one row, where blocks cannot span rows; the quantization
itself is over the flattened matrix in every case.)
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from loraplex.runtime.models.bitsandbytes import BitsAndBytesQuantization

bitsandbytes = pytest.importorskip("bitsandbytes.functional")

NAME = "model.layers.0.mlp.up_proj"


def saved_four_bit(weight: torch.Tensor, quant_type: str, blocksize: int, nested: bool,
                   storage: torch.dtype = torch.uint8):
    """(the linear's tensors by leaf as saved, bitsandbytes' dequantized weight)."""
    packed, state = bitsandbytes.quantize_4bit(weight, blocksize=blocksize,
                                               quant_type=quant_type,
                                               compress_statistics=nested, quant_storage=storage)
    flat = copy.copy(state)
    flat.shape = torch.Size([1, weight.numel()])
    dequantized = bitsandbytes.dequantize_4bit(packed, flat).view_as(weight)
    leaves = {"weight": packed, **{f"weight.{key}": value for key, value in
                                   state.as_dict(packed=True).items()}}
    return leaves, dequantized


def served(quantization: BitsAndBytesQuantization, leaves: dict[str, torch.Tensor]):
    found = quantization.quantized_linears(f"{NAME}.{leaf}" for leaf in leaves)
    assert found == {NAME: set(leaves)}
    return quantization.serve([quantization.read(NAME, leaves)], torch.float32)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True], ids=["plain-absmax", "double-quant"])
@pytest.mark.parametrize("blocksize", [64, 128, 1024])
def test_four_bit_weights_are_bitsandbytes_weights(quant_type, nested, blocksize) -> None:
    torch.manual_seed(blocksize)
    weight = torch.randn(96, 128)  # blocks of 1024 span 8 rows each
    leaves, dequantized = saved_four_bit(weight, quant_type, blocksize, nested)
    assert (dequantized - weight).abs().max() < weight.abs().max() / 4  # a real quantization
    quantized = served(BitsAndBytesQuantization(4, quant_type), leaves)
    assert torch.equal(quantized.dequantize(), dequantized)
    x = torch.randn(5, 128)
    torch.testing.assert_close(quantized.linear(x), x @ dequantized.t(), rtol=1e-4, atol=1e-4)


def test_four_bit_codes_stored_as_bf16_read_the_same() -> None:
    weight = torch.randn(64, 256)
    leaves, dequantized = saved_four_bit(weight, "nf4", 64, True, storage=torch.bfloat16)
    assert leaves["weight"].dtype == torch.bfloat16
    quantized = served(BitsAndBytesQuantization(4, "nf4"), leaves)
    assert torch.equal(quantized.dequantize(), dequantized)


def test_fused_shards_of_different_blocks_serve_side_by_side() -> None:
    quantization = BitsAndBytesQuantization(4, "nf4")
    parts, references = [], []
    for blocksize in (64, 128):
        leaves, dequantized = saved_four_bit(torch.randn(32, 128), "nf4", blocksize, False)
        parts.append(quantization.read(NAME, leaves))
        references.append(dequantized)
    assert torch.equal(quantization.serve(parts, torch.float32).dequantize(),
                       torch.cat(references))


def test_eight_bit_weights_are_bitsandbytes_weights() -> None:
    weight = torch.randn(96, 128)
    codes, row_absmax, _ = bitsandbytes.int8_vectorwise_quant(weight)
    leaves = {"weight": codes, "SCB": row_absmax,
              "weight_format": torch.tensor(0, dtype=torch.uint8)}
    quantization = BitsAndBytesQuantization(8, "int8")
    assert quantization.quantized_linears([f"{NAME}.{leaf}" for leaf in leaves]
                                          + [f"{NAME}.bias"]) == {NAME: set(leaves)}
    quantized = quantization.serve([quantization.read(NAME, leaves)], torch.float32)
    expected = bitsandbytes.int8_vectorwise_dequant(codes, row_absmax)
    torch.testing.assert_close(quantized.dequantize(), expected, rtol=2e-7, atol=0)
    assert (expected - weight).abs().max() < weight.abs().max() / 100


def test_config_settings_name_the_format() -> None:
    of = BitsAndBytesQuantization.of
    assert of({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}).method == "bitsandbytes-nf4"
    assert of({"_load_in_4bit": True}).method == "bitsandbytes-fp4"  # bitsandbytes' default
    assert of({"load_in_8bit": True}).method == "bitsandbytes-int8"
    with pytest.raises(ValueError, match="exactly one of load_in_4bit and load_in_8bit"):
        of({"load_in_4bit": True, "load_in_8bit": True})
    with pytest.raises(ValueError, match="bnb_4bit_quant_type 'int4' is not supported"):
        of({"load_in_4bit": True, "bnb_4bit_quant_type": "int4"})


def four_bit(**edits) -> dict[str, torch.Tensor]:
    leaves, _ = saved_four_bit(torch.randn(32, 128), "nf4", 64, True)
    for leaf, value in edits.items():
        leaf = leaf.replace("__", ".", 1)
        if value is None:
            del leaves[leaf]
        else:
            leaves[leaf] = value
    return leaves


def quant_state(**changes) -> torch.Tensor:
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [32, 128],
             "nested_blocksize": 256, "nested_offset": 0.01, **changes}
    return torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)


STATE = "weight__quant_state.bitsandbytes__nf4"
REFUSALS = {  # name -> (leaves edited, expected message)
    "short-codes": (dict(weight=torch.zeros(100, 1, dtype=torch.uint8)),
                    "weight holds 100 bytes; 32x128 4-bit codes take 2048"),
    "few-absmax": (dict(weight__absmax=torch.zeros(10, dtype=torch.uint8)),
                   "absmax holds 10 scales; .* needs 64"),
    "no-nested-map": (dict(weight__nested_quant_map=None), "has no weight.nested_quant_map"),
    "no-quant-map": (dict(weight__quant_map=None), "has no weight.quant_map"),
    "not-json": ({STATE: torch.tensor([255, 0, 1], dtype=torch.uint8)},
                 "is not bitsandbytes' JSON quant state"),
    "no-shape": ({STATE: quant_state(shape=None)}, "expected a 2-dimensional shape"),
    "fp4-in-nf4": ({STATE: quant_state(quant_type="fp4")}, "quant type 'fp4' is not served"),
    "narrow-groups": ({STATE: quant_state(shape=[64, 80], blocksize=64),
                       "weight": torch.zeros(64 * 40, 1, dtype=torch.uint8),
                       "weight__absmax": torch.zeros(80, dtype=torch.uint8)},
                      "blocks of 64 over rows of 80 inputs make groups of 16"),
}


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_bad_four_bit_tensors_are_refused_naming_the_problem(refusal) -> None:
    edits, message = REFUSALS[refusal]
    with pytest.raises(ValueError, match=message):
        BitsAndBytesQuantization(4, "nf4").read(NAME, four_bit(**edits))


def test_bad_eight_bit_tensors_are_refused() -> None:
    quantization = BitsAndBytesQuantization(8, "int8")
    codes = torch.zeros(8, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="weight_format 1 is a GPU tile layout"):
        quantization.read(NAME, {"weight": codes, "SCB": torch.ones(8),
                                 "weight_format": torch.tensor(1, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="int8 .N, K. weight and N SCB values"):
        quantization.read(NAME, {"weight": codes, "SCB": torch.ones(4)})
    with pytest.raises(ValueError, match="has no SCB"):
        quantization.read(NAME, {"weight": codes})
