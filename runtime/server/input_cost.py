"""What a prompt may cost before it is refused: characters checked before tokenizing, and
memory handed back to the system after a large one.

Tokenizing is the expensive part of refusing a prompt that is too long (a 10 MB prompt
is millions of tokens, seconds of CPU and gigabytes of peak memory), so the length is
first checked in characters. No token of the vocabulary covers more than
`max_token_chars` characters of text, so a prompt of more than `max_input_length ×
max_token_chars` characters has more tokens than allowed and is refused unread; one that
asks to keep only its last `truncate` tokens needs only its last `truncate ×
max_token_chars` characters tokenized. (A normalizer that drops characters could make a
token cover more of the raw text; `SAFETY` allows for that.)

glibc keeps freed memory in its arenas; `release_memory` returns it after a large
request, so one hostile request does not leave the pod's RSS gigabytes higher.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

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


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


def release_memory() -> None:
    """Give freed heap memory back to the system (glibc; elsewhere nothing to do)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
