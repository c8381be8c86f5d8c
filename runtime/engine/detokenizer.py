"""Token ids to text, one token at a time, emitting only complete UTF-8 characters.

Byte-level tokenizers split characters (emoji, CJK) across tokens; tokenizers'
`DecodeStream` (the incremental decoder of the `tokenizers` library) returns nothing
until a character is complete, and handles the leading-space rules of each tokenizer
when primed with the tail of the prompt.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase

PRIMING_TOKENS = 8  # prompt tokens of context for the first generated token


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Ids whose text is skipped in output (control tokens such as <|im_end|>)."""
    added = {token_id for token_id, token in tokenizer.added_tokens_decoder.items()
             if token.special}
    return frozenset(added | set(tokenizer.all_special_ids))


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_token_ids: list[int],
                 vocab_size: int) -> None:
        self._backend = tokenizer.backend_tokenizer
        self._vocab_size = vocab_size
        prime = [i for i in prompt_token_ids[-PRIMING_TOKENS:] if i < vocab_size]
        self._stream = DecodeStream(ids=prime, skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        """Text completed by `token_id` ("" while a character is still incomplete)."""
        if token_id >= self._vocab_size:  # random-weight models may pick ids past the vocab
            return ""
        return self._stream.step(self._backend, token_id) or ""
