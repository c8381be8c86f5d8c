"""Incremental detokenization: streamed pieces add up to what `decode` gives, valid UTF-8."""

from __future__ import annotations

import pytest

from loraplex.runtime.engine.detokenizer import IncrementalDetokenizer, special_token_ids
from tests.helpers import builtin_tokenizer

TEXTS = [
    "Plain ASCII, with punctuation!",
    "Ünïcödé: naïve café — 日本語のテキスト 😀👍🏽 and more",
    "  leading spaces\nnew lines\ttabs",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_equal_the_full_decode(text):
    tokenizer = builtin_tokenizer()
    prompt = tokenizer.encode("Say something:")
    generated = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer, prompt, len(tokenizer))
    pieces = [detokenizer.step(token_id) for token_id in generated]
    assert "".join(pieces) == tokenizer.decode(generated, skip_special_tokens=True)
    assert all("\ufffd" not in piece for piece in pieces)


def test_multibyte_characters_wait_for_their_last_token():
    tokenizer = builtin_tokenizer()
    generated = tokenizer.encode("😀")
    if len(generated) < 2:
        pytest.skip("the emoji is one token in this vocabulary")
    detokenizer = IncrementalDetokenizer(tokenizer, [], len(tokenizer))
    pieces = [detokenizer.step(token_id) for token_id in generated]
    assert pieces[:-1] == [""] * (len(generated) - 1) and pieces[-1] == "😀"


def test_special_tokens_are_skipped_and_ids_past_the_vocab_give_no_text():
    tokenizer = builtin_tokenizer()
    detokenizer = IncrementalDetokenizer(tokenizer, [], len(tokenizer))
    assert detokenizer.step(tokenizer.eos_token_id) == ""
    assert detokenizer.step(len(tokenizer) + 5) == ""
    assert tokenizer.eos_token_id in special_token_ids(tokenizer)
