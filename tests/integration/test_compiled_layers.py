"""Decode steps run the decoder layers in one compiled call (`cpu_decoder`): the builtin fp32
model's tokens and logprobs equal the layer-by-layer path's exactly without adapters, and
within the SiLU's last bits with 8 adapters of ranks 8-64 (some targeting part of the
projections) and with one adapter under every row; steps with prefill rows keep that path,
a layer packed again is read as it is now, and a cache slot out of range is refused before
anything is written.
"""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.request import GenerationRequest
from loraplex.runtime.kernels import cpu_attention, cpu_decoder
from tests.helpers import CHAT_PROMPTS, builtin_config, builtin_loaded
from tests.helpers.compiled_steps import Steps, assert_same_steps, generate_steps, requests

pytestmark = [pytest.mark.model, pytest.mark.timeout(600),
              pytest.mark.skipif(not cpu_decoder.available(), reason="no C compiler")]


def generate(batch: list[GenerationRequest], adapters: dict[str, str] | None = None) -> Steps:
    return generate_steps(builtin_config(device_slots=8, max_lora_rank=64), builtin_loaded(),
                          batch, adapters)


def test_compiled_layers_equal_the_layer_by_layer_path(compiled_calls):
    model = builtin_loaded().model.model
    assert model.compiled_layer_weights(len(CHAT_PROMPTS)) is not None  # fp32 panels throughout
    # token ids and fp32 logprobs, exactly
    assert_same_steps(model, compiled_calls, lambda: generate(requests(12)), exact=True)


def test_steps_with_adapters_compile_too_and_agree(compiled_calls, tmp_path):
    """8 adapters over the 10 rows (two with none), ranks 8-64, one targeting only q and v
    (its rows add nothing to o and the MLP)."""
    target = LoraTargetShapes.from_hf_config(builtin_loaded().hf_config)
    adapters = {f"a{index}": str(write_random_adapter(
        tmp_path / f"a{index}", target, (8, 16, 32, 64)[index % 4], seed=index,
        **({"target_modules": ["q_proj", "v_proj"]} if index == 3 else {})))
        for index in range(8)}
    names = [f"a{index % 8}" if index < 8 else None for index in range(len(CHAT_PROMPTS))]
    model = builtin_loaded().model.model
    assert_same_steps(model, compiled_calls, lambda: generate(requests(8, names), adapters))


def test_one_adapter_under_every_row_still_compiles(compiled_calls, tmp_path):
    """Ten rows of one slot are two of the kernel's items (8 and 2 rows), not torch's
    matmuls, so the step stays compiled."""
    target = LoraTargetShapes.from_hf_config(builtin_loaded().hf_config)
    adapters = {"only": str(write_random_adapter(tmp_path / "only", target, 64, seed=5))}
    model = builtin_loaded().model.model
    assert_same_steps(model, compiled_calls,
                      lambda: generate(requests(8, ["only"] * len(CHAT_PROMPTS)), adapters))


def test_only_steps_of_decode_rows_alone_take_the_compiled_layers(compiled_calls):
    generate(requests(1)[:1])  # the prefill step alone
    assert compiled_calls == []
    generate(requests(3)[:1])  # a prefill step, then two decode steps of one row
    assert compiled_calls == [1, 1]


def test_a_layer_packed_again_is_read_as_it_is_now():
    """The weights are taken from the layers at each step, not kept from the first one."""
    model = builtin_loaded().model.model
    down = model.layers[3].mlp.down_proj
    before = model.compiled_layer_weights(1)[3].down.codes
    packed = down.packed_weight
    try:
        down.packed_weight = packed.clone()
        assert model.compiled_layer_weights(1)[3].down.codes is down.packed_weight
        assert model.compiled_layer_weights(1)[3].down.codes is not before
    finally:
        down.packed_weight = packed


def test_a_cache_slot_out_of_range_is_refused_before_any_write():
    model = builtin_loaded().model.model
    shape, weights = model._decoder_shape(), model.compiled_layer_weights(1)
    caches = [(torch.zeros(2, 16, shape.kv_heads, shape.head_dim),
               torch.zeros(2, 16, shape.kv_heads, shape.head_dim)) for _ in model.layers]
    hidden = torch.randn(1, shape.hidden)
    before = hidden.clone()
    cos = torch.ones(1, 1, shape.head_dim)
    decode = cpu_attention.native_decode(torch.tensor([[0, 1]]), [3], 16, 2)
    with pytest.raises(ValueError, match="slot is outside the cache's 32"):
        cpu_decoder.run_layers(hidden, weights, caches, shape, cos, cos * 0,
                               torch.tensor([32]), decode)
    assert torch.equal(hidden, before)
    assert not any(keys.any() or values.any() for keys, values in caches)
    with pytest.raises(ValueError, match="one int64 slot"):
        cpu_decoder.run_layers(hidden, weights, caches, shape, cos, cos * 0,
                               torch.tensor([0, 1]), decode)
    narrow = [(keys[..., :-1], values) for keys, values in caches]  # a cache of another shape
    with pytest.raises(ValueError, match="caches of one shape"):
        cpu_decoder.run_layers(hidden, weights, narrow, shape, cos, cos * 0,
                               torch.tensor([0]), decode)
    assert torch.equal(hidden, before)
