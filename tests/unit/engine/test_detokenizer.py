"""Incremental detokenization: streamed pieces add up to what `decode` gives, valid UTF-8,
through the tokenizer other threads encode with."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loraplex.runtime.engine.detokenizer import IncrementalDetokenizer, special_token_ids
from loraplex.runtime.models.loader import load_tokenizer
from tests.helpers import builtin_folder, builtin_tokenizer

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


def _folder_with_padding_and_truncation(tmp_path: Path) -> Path:
    """The builtin tokenizer's files, its tokenizer.json padding and truncating as some
    checkpoints ship it."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (builtin_folder() / name).is_file():
            shutil.copy(builtin_folder() / name, folder / name)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None,
                       "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}
    spec["truncation"] = {"direction": "Right", "max_length": 16, "strategy": "LongestFirst",
                          "stride": 0}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


@pytest.mark.model
def test_one_tokenizer_encodes_on_many_threads_while_another_decodes(tmp_path):
    """The engine decodes through the very tokenizer the HTTP threads encode with: loading
    clears what a call would reconfigure (a reconfiguring call fails on the other threads)."""
    tokenizer = load_tokenizer(_folder_with_padding_and_truncation(tmp_path))
    backend = tokenizer.backend_tokenizer
    assert backend.padding is None and backend.truncation is None
    text = " ".join(TEXTS) * 40
    expected_ids = tokenizer(text)["input_ids"]
    assert len(expected_ids) > 16  # not truncated
    expected_text = tokenizer.decode(expected_ids, skip_special_tokens=True)

    def encode() -> list[int]:
        return tokenizer(text)["input_ids"]

    def decode() -> str:
        detokenizer = IncrementalDetokenizer(tokenizer, [], len(tokenizer))
        return "".join(detokenizer.step(token_id) for token_id in expected_ids)

    with ThreadPoolExecutor(max_workers=4) as pool:
        encoded = [pool.submit(encode) for _ in range(8)]
        decoded = [pool.submit(decode) for _ in range(8)]
        assert all(future.result() == expected_ids for future in encoded)
        assert all(future.result() == expected_text for future in decoded)
