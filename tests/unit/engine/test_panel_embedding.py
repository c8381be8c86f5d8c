"""Token lookups in the panels of a tied LM head: an fp32 head's rows are the table's own,
bit for bit; a quantized model's int8 head's are its dequantized weight; no copy of the
table is left beside the panels."""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.layers.panel_embedding import Int8PanelEmbedding, PanelEmbedding
from loraplex.runtime.layers.quantized import Int8Weight
from tests.unit.engine.test_quantized_embedding import tiny_model

pytestmark = pytest.mark.skipif(not cpu_linear.supports(torch.empty(1, 1)),
                                reason="no compiled fp32 linear on this machine")


def test_rows_are_the_table_bit_for_bit_at_every_panel_column() -> None:
    table = torch.randn(45, 8)  # a partial last panel
    embedding = PanelEmbedding(cpu_linear.pack(table), 45)
    ids = torch.tensor([[0, 31, 32], [44, 1, 31]])
    assert torch.equal(embedding(ids), table[ids])
    assert embedding(ids[:, :0]).shape == (2, 0, 8)


def test_ids_outside_the_table_are_refused() -> None:
    embedding = PanelEmbedding(cpu_linear.pack(torch.randn(45, 8)), 45)
    for bad in (45, 63, -1):  # 45..63 sit in the last panel's zero padding
        with pytest.raises(IndexError, match="outside the embedding's 45 rows"):
            embedding(torch.tensor([3, bad]))
    with pytest.raises(ValueError, match="do not hold 65 rows"):
        PanelEmbedding(cpu_linear.pack(torch.randn(45, 8)), 65)


def test_a_tied_fp32_head_in_panels_serves_the_lookups() -> None:
    model = tiny_model(torch.float32, tied=True)
    table = model.model.embed_tokens.weight.detach().clone()
    untied = tiny_model(torch.float32, tied=False)
    untied.pack_weights()
    model.pack_weights()
    embedding = model.model.embed_tokens
    assert isinstance(embedding, PanelEmbedding)
    assert embedding.panels is model.lm_head.packed_weight  # shared, not copied
    assert model.lm_head.weight is None and not list(embedding.parameters())
    ids = torch.tensor([0, 5, table.shape[0] - 1, 31, 32])
    assert torch.equal(embedding(ids), table[ids])  # exact
    hidden = torch.randn(3, table.shape[1])
    torch.testing.assert_close(model.compute_logits(hidden), hidden @ table.t(), rtol=1e-5,
                               atol=1e-5)
    # the table counted once: the untied model's bytes less its separate embedding table
    assert model.weight_bytes() == untied.weight_bytes() - table.nbytes


def int8_head(rows: int, width: int) -> Int8Weight:
    table = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows))
    return Int8Weight.quantize(table, kernel="panels")


def test_int8_rows_are_the_heads_dequantized_rows_at_every_panel_column() -> None:
    head = int8_head(45, 128)  # a partial last panel
    embedding = Int8PanelEmbedding(head, torch.float32)
    table = head.dequantize()
    ids = torch.arange(45)  # every column of both panels
    assert torch.equal(embedding(ids), table)
    assert torch.equal(embedding(ids.view(5, 9)), table.view(5, 9, 128))
    assert embedding(ids[:0]).shape == (0, 128) and embedding.nbytes == 0
    assert Int8PanelEmbedding(head, torch.bfloat16)(ids).dtype == torch.bfloat16


def test_int8_lookups_refuse_ids_outside_the_table_and_heads_without_panels() -> None:
    embedding = Int8PanelEmbedding(int8_head(45, 64), torch.float32)
    for bad in (45, 63, -1):
        with pytest.raises(IndexError, match="outside the embedding's 45 rows"):
            embedding(torch.tensor([3, bad]))
    with pytest.raises(ValueError, match="no panels to look tokens up in"):
        Int8PanelEmbedding(Int8Weight.quantize(torch.randn(48, 64), kernel="torch"),
                           torch.float32)


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_quantized_models_tied_int8_head_serves_the_lookups(dtype, method) -> None:
    model = tiny_model(dtype, tied=True)
    model.quantize_weights(method, 32)
    model.pack_weights()
    head, embedding = model.lm_head.quantized, model.model.embed_tokens
    assert isinstance(head, Int8Weight) and head.kernel == "panels"
    assert model.lm_head.weight is None
    assert isinstance(embedding, Int8PanelEmbedding) and embedding.head is head
    ids = torch.tensor([0, 5, head.out_features - 1, 31, 32])
    assert torch.equal(embedding(ids), head.dequantize()[ids].to(dtype))
    hidden = torch.randn(3, head.in_features, dtype=dtype)
    expected = hidden.double() @ head.dequantize().double().t()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(model.compute_logits(hidden).double(), expected,
                               rtol=tolerance, atol=tolerance)
    # the table held once, in the head's 8 bits: the head and the decoder, nothing else
    linears = sum(m.weight_bytes for m in model.own_linears())
    norms = sum(p.nbytes for p in model.parameters())
    assert model.weight_bytes() == linears + norms
