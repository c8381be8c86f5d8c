"""The int8 token embedding of a quantized model: rows are their own dequantized table, the
table is the weights rounded by at most half a step, and the plain table goes only where
nothing else reads it."""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.layers.panel_embedding import Int8PanelEmbedding, PanelEmbedding
from loraplex.runtime.layers.quantized_embedding import GROUP, QuantizedEmbedding
from loraplex.runtime.models.llama import LlamaForCausalLM
from loraplex.runtime.models.loader import build_model
from loraplex.runtime.models.shapes import shape_config


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_are_the_dequantized_table_within_half_a_step_of_the_weights(dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    weight = (torch.randn(300, 4 * GROUP, generator=generator) * 0.05).to(dtype)
    weight[7] = 0.0  # a row of zeros: a tiny scale, no division by zero
    weight[9, :GROUP] = 1e4  # one group far larger than the rest of its row
    embedding = QuantizedEmbedding.quantize(weight)
    table = embedding.dequantize()
    ids = torch.tensor([[0, 7, 9], [299, 9, 3]])
    rows = embedding(ids)
    assert rows.shape == (2, 3, 4 * GROUP) and rows.dtype == dtype
    assert torch.equal(rows, table[ids].to(dtype))
    steps = embedding.scales.repeat_interleave(GROUP, dim=1)  # [V, d]
    assert torch.all((table - weight.float()).abs() <= steps / 2 * 1.001)  # and fp rounding
    assert torch.equal(table[7], torch.zeros(4 * GROUP))
    assert embedding.nbytes == 300 * 4 * GROUP + 300 * 4 * 4


def test_a_width_that_is_not_whole_groups_or_mismatched_scales_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantizedEmbedding.quantize(torch.randn(10, GROUP + 8))
    with pytest.raises(ValueError, match="scales of 10x2"):
        QuantizedEmbedding(torch.zeros(10, 2 * GROUP, dtype=torch.int8), torch.ones(10, 3),
                           torch.float32)


def tiny_model(dtype: torch.dtype, tied: bool) -> LlamaForCausalLM:
    config = shape_config("tiny-llama")
    config.tie_word_embeddings = tied
    model = build_model(config, dtype, torch.device("cpu"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    return model


@pytest.mark.parametrize(("dtype", "tied"), [(torch.bfloat16, True), (torch.float32, False)])
def test_a_quantized_models_lookups_leave_no_plain_table(dtype, tied) -> None:
    """On a CPU the LM head goes to int8 panels: a tied one serves the lookups from its own
    rows (tests/unit/engine/test_panel_embedding.py), an untied model's lookups read int8
    rows of their own; either way the plain table is released."""
    model = tiny_model(dtype, tied)
    table = model.model.embed_tokens.weight.detach().clone()
    hidden = torch.randn(3, table.shape[1], dtype=dtype)
    logits = model.compute_logits(hidden)
    plain = tiny_model(dtype, tied)
    plain.pack_weights()
    model.quantize_weights("int8", 32)
    model.pack_weights()
    embedding = model.model.embed_tokens
    assert model.lm_head.weight is None and model.lm_head.quantized is not None
    assert isinstance(embedding, Int8PanelEmbedding if tied else QuantizedEmbedding)
    rows = embedding(torch.arange(table.shape[0])).float()
    assert (rows - table.float()).abs().max() < table.float().abs().max() / 127
    assert torch.allclose(model.compute_logits(hidden), logits, atol=1e-2)
    assert model.weight_bytes() < plain.weight_bytes() - (table.nbytes - embedding.nbytes)


def test_a_tied_lm_head_that_reads_the_plain_table_keeps_it_plain() -> None:
    """Where the head is neither packed nor in int8 panels (a GPU; here the meta device),
    it multiplies by the plain table, and an int8 copy of the rows would only add bytes."""
    config = shape_config("tiny-llama")
    config.tie_word_embeddings = True
    model = build_model(config, torch.float16, torch.device("meta"))
    assert not model.lm_head.can_pack
    assert not model.quantize_embedding()
    model.quantize_weights("int8", 32)
    model.pack_weights()
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize(("dtype", "tied", "quantize"), [
    (torch.float32, True, False), (torch.float32, False, False), (torch.float16, True, False),
    (torch.float32, True, True), (torch.float32, False, True)])
def test_a_step_streams_every_weight_but_the_table_it_only_looks_rows_up_in(dtype, tied,
                                                                            quantize) -> None:
    model = tiny_model(dtype, tied)
    table = model.model.embed_tokens.weight.nbytes
    if quantize:
        model.quantize_weights("int8", 32)
    model.pack_weights()
    embedding = model.model.embed_tokens
    if quantize:  # int8 rows of their own, or (tied) the int8 head's own: nothing apart
        expected = model.weight_bytes() - embedding.nbytes
    elif tied and dtype == torch.float32:  # lookups in the LM head's panels: nothing apart
        assert isinstance(embedding, PanelEmbedding)
        expected = model.weight_bytes()
    elif tied and dtype == torch.float16:  # unpacked: the LM head multiplies by the table
        expected = model.weight_bytes()
    else:
        expected = model.weight_bytes() - table
    assert model.streamed_weight_bytes() == expected
