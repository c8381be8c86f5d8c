"""What a prompt may cost before it is refused: characters checked before tokenizing, and
the size past which a request's text is large enough to hand its freed memory back to the
system once tokenized (`loraplex.runtime.heap`).

Tokenizing is the expensive part of refusing a prompt that is too long (a 10 MB prompt
is millions of tokens, seconds of CPU and gigabytes of peak memory), so the length is
first checked in characters. No token of the vocabulary covers more than
`max_token_chars` characters of text, so a prompt of more than `max_input_length ×
max_token_chars` characters has more tokens than allowed and is refused unread; one that
asks to keep only its last `truncate` tokens needs only its last `truncate ×
max_token_chars` characters tokenized. (A normalizer that drops characters could make a
token cover more of the raw text; `SAFETY` allows for that.)
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

SAFETY = 2  # characters a normalizer might remove per character it keeps
LARGE_TEXT_CHARS = 1 << 20  # after a text this long, freed memory goes back to the system


def max_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters of text one token of `tokenizer` can cover (an upper bound).

    Byte-level vocabularies spell each byte as one character and SentencePiece spells a
    space as one, so a token's spelling is never shorter than the text it covers.
    """
    added = [str(token) for token in tokenizer.added_tokens_decoder.values()]
    return max(len(spelling) for spelling in [*tokenizer.get_vocab(), *added]) * SAFETY


def tail_chars(text: str, keep_tokens: int, chars_per_token: int) -> str:
    """The end of `text` that holds at least its last `keep_tokens` tokens."""
    return text[-(keep_tokens + 1) * chars_per_token:]
