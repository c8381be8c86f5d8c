"""The step's grammar bitmask: constrained rows filled together, free rows left alone."""

from __future__ import annotations

import torch
import xgrammar

from loraplex.runtime.layers.grammar_mask import GrammarBitmask
from loraplex.runtime.structured.grammar_spec import GrammarSpec
from tests.unit.structured.test_grammar_cache import VOCAB, make_cache


def test_each_constrained_row_keeps_only_what_its_grammar_allows() -> None:
    cache = make_cache()
    digits = cache.compile(GrammarSpec.regex("[0-9]+"))
    word = cache.compile(GrammarSpec.choice(["hello"]))
    matchers = [xgrammar.GrammarMatcher(digits), None, xgrammar.GrammarMatcher(word), None]
    mask = GrammarBitmask(VOCAB, max_rows=2, device=torch.device("cpu")).build(matchers)
    assert mask.rows == [0, 2] and mask.bitmask.shape[0] == 4  # grew past max_rows
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0))
    masked = logits.clone()
    mask.apply(masked)
    assert torch.equal(masked[[1, 3]], logits[[1, 3]])
    for row in (0, 2):
        allowed = torch.isfinite(masked[row]).nonzero().flatten().tolist()
        assert 0 < len(allowed) < VOCAB
        assert all(xgrammar.GrammarMatcher(digits if row == 0 else word).accept_token(token)
                   for token in allowed[:50])


def test_no_constrained_row_means_no_mask() -> None:
    bitmask = GrammarBitmask(VOCAB, max_rows=4, device=torch.device("cpu"))
    assert bitmask.build([None, None]) is None
