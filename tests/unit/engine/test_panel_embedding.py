"""Token lookups in the panels of a tied fp32 LM head: the table's own rows, bit for bit,
with no copy of the table left beside the panels."""

from __future__ import annotations

import pytest
import torch

from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.layers.panel_embedding import PanelEmbedding
from loraplex.runtime.layers.quantized_embedding import QuantizedEmbedding
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


@pytest.mark.parametrize("quantize", [False, True], ids=["plain", "int8"])
def test_a_tied_fp32_head_in_panels_serves_the_lookups(quantize) -> None:
    model = tiny_model(torch.float32, tied=True)
    table = model.model.embed_tokens.weight.detach().clone()
    untied = tiny_model(torch.float32, tied=False)
    untied.pack_weights()
    if quantize:
        model.quantize_weights("int8", 32)
        assert isinstance(model.model.embed_tokens, QuantizedEmbedding)
    model.pack_weights()
    embedding = model.model.embed_tokens
    assert isinstance(embedding, PanelEmbedding)
    assert embedding.panels is model.lm_head.packed_weight  # shared, not copied
    assert model.lm_head.weight is None and not list(embedding.parameters())
    ids = torch.tensor([0, 5, table.shape[0] - 1, 31, 32])
    assert torch.equal(embedding(ids), table[ids])  # exact, also where int8 rows were
    hidden = torch.randn(3, table.shape[1])
    torch.testing.assert_close(model.compute_logits(hidden), hidden @ table.t(), rtol=1e-5,
                               atol=1e-5)
    # the table counted once: the untied model's bytes less its separate embedding table
    if not quantize:
        assert model.weight_bytes() == untied.weight_bytes() - table.nbytes
