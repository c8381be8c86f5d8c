"""The compiled-grammar cache: keys, sharing, the byte budget's LRU, refusals, choices."""

from __future__ import annotations

import asyncio
import json

import pytest
import xgrammar

from loraplex.runtime.structured.grammar_cache import GrammarCache, GrammarError
from loraplex.runtime.structured.grammar_spec import GrammarKind, GrammarSpec
from tests.helpers import builtin_tokenizer

EOS = 2  # <|im_end|>
VOCAB = 49152


def make_cache(budget_bytes: int = 64 << 20) -> GrammarCache:
    return GrammarCache(builtin_tokenizer(), VOCAB, [EOS], budget_bytes)


def accepts(grammar: xgrammar.CompiledGrammar, text: str) -> bool:
    """Whether `text` followed by EOS is a complete output of `grammar`."""
    matcher = xgrammar.GrammarMatcher(grammar)
    ids = builtin_tokenizer().encode(text, add_special_tokens=False)
    return all(matcher.accept_token(token) for token in ids + [EOS])


def test_a_spec_compiles_once_and_spacing_does_not_change_its_key() -> None:
    async def run():
        cache = make_cache()
        first = await cache.get(GrammarSpec.json_schema({"type": "integer"}))
        again = await cache.get(GrammarSpec.json_schema('{ "type" :  "integer" }'))
        return first, again
    first, again = asyncio.run(run())
    assert not first.cached and first.compile_seconds > 0
    assert again.cached and again.grammar is first.grammar
    assert accepts(first.grammar, "42") and not accepts(first.grammar, '"42"')


def test_concurrent_requests_for_one_spec_share_one_compilation() -> None:
    async def run():
        cache = make_cache()
        spec = GrammarSpec.regex(r"[a-z]{3}\d+")
        return await asyncio.gather(*(cache.get(spec) for _ in range(4))), len(cache)
    entries, size = asyncio.run(run())
    assert [entry.cached for entry in entries] == [False, True, True, True]
    assert len({id(entry.grammar) for entry in entries}) == 1 and size == 1


def test_the_byte_budget_evicts_the_least_recently_used() -> None:
    specs = [GrammarSpec.regex(f"x{index}[a-z]+") for index in range(3)]

    async def run():
        probe = make_cache()
        size = (await probe.get(specs[0])).grammar.memory_size_bytes
        cache = make_cache(budget_bytes=int(size * 2.5))  # room for two
        await cache.get(specs[0])
        await cache.get(specs[1])
        await cache.get(specs[0])  # now the most recently used
        await cache.get(specs[2])  # evicts specs[1]
        return cache
    cache = asyncio.run(run())
    assert specs[0] in cache and specs[2] in cache and specs[1] not in cache
    assert cache.size_bytes <= cache.budget_bytes


def test_a_grammar_larger_than_the_budget_is_served_but_not_kept() -> None:
    async def run():
        cache = make_cache(budget_bytes=1)
        entry = await cache.get(GrammarSpec.choice(["yes", "no"]))
        return cache, entry
    cache, entry = asyncio.run(run())
    assert accepts(entry.grammar, "yes") and len(cache) == 0 and cache.size_bytes == 0


@pytest.mark.parametrize(("spec", "message"), [
    (GrammarSpec.json_schema({"type": "objekt"}), "Unsupported type"),
    (GrammarSpec.regex("(ab"), "parenthesis"),
    (GrammarSpec.grammar("root ::= missing"), "missing"),
])
def test_what_cannot_compile_is_a_clear_error_and_is_not_cached(spec, message) -> None:
    async def run():
        cache = make_cache()
        with pytest.raises(GrammarError, match=message) as caught:
            await cache.get(spec)
        return cache, str(caught.value)
    cache, text = asyncio.run(run())
    assert len(cache) == 0 and ".cc:" not in text and spec.kind.value in text


@pytest.mark.parametrize("bad", [[], [""], ["a", 3]])
def test_bad_choices_are_refused(bad) -> None:
    with pytest.raises(ValueError, match="choices"):
        GrammarSpec.choice(bad)


def test_a_schema_that_is_not_json_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid JSON"):
        GrammarSpec.json_schema("{nope")
    with pytest.raises(ValueError, match="must be an object"):
        GrammarSpec.json_schema([1])


def test_choices_with_quotes_and_backslashes_match_exactly() -> None:
    choices = ['say "hi"', "a\\b", "naïve"]
    spec = GrammarSpec.choice(choices)
    assert spec.kind is GrammarKind.CHOICE and json.loads(spec.source) == choices
    grammar = make_cache().compile(spec)
    assert all(accepts(grammar, choice) for choice in choices)
    assert not accepts(grammar, "say hi") and not accepts(grammar, "a")


def test_json_object_accepts_any_object_only() -> None:
    grammar = make_cache().compile(GrammarSpec.json_object())
    assert accepts(grammar, '{"a": [1, {"b": null}]}') and accepts(grammar, "{}")
    assert not accepts(grammar, "[1]") and not accepts(grammar, '"x"')
