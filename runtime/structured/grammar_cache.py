"""Compiled grammars by spec: compiled in worker threads, kept in an LRU with a byte budget.

Compiling a JSON schema takes milliseconds to seconds (xgrammar precomputes, per grammar
state, which of the vocabulary's tokens may follow), so it never runs on the event loop
or the engine's loop: a request that needs a grammar awaits `get()` before it reaches the
engine, while every other request keeps streaming. Concurrent requests for one spec share
one compilation. A spec that cannot compile raises `GrammarError` (a `ValueError` whose
message is xgrammar's, without its source location), which the server answers with a
4xx before any work. The cache and the in-flight table are touched only on the event
loop; worker threads only compile.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loraplex.runtime.structured.grammar_spec import GrammarKind, GrammarSpec
from loraplex.runtime.torch_threads import background_pool

if TYPE_CHECKING:
    import xgrammar

COMPILE_WORKERS = 2  # grammars compiled at once (a slow one never blocks the next alone)
XGRAMMAR_LOCATION = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")  # "[12:00:00] /src/x.cc:5: "


class GrammarError(ValueError):
    """The constraint cannot be compiled (an invalid or unsupported schema, regex, EBNF)."""


@dataclass(frozen=True, slots=True)
class CompiledEntry:
    grammar: xgrammar.CompiledGrammar
    cached: bool  # found in the cache (or in an in-flight compilation of the same spec)
    compile_seconds: float  # 0 when cached


class GrammarCache:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int],
                 budget_bytes: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size  # the model's logits width (may exceed the tokenizer's)
        self._stop_token_ids = list(stop_token_ids)
        self.budget_bytes = budget_bytes
        self._compiler: xgrammar.GrammarCompiler | None = None  # built on the first compile
        self._compiler_lock = threading.Lock()
        self._entries: OrderedDict[GrammarSpec, xgrammar.CompiledGrammar] = OrderedDict()
        self._pending: dict[GrammarSpec, asyncio.Future] = {}
        self._executor = background_pool(COMPILE_WORKERS, "grammar")
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, spec: GrammarSpec) -> bool:
        return spec in self._entries

    async def get(self, spec: GrammarSpec) -> CompiledEntry:
        """The compiled grammar of `spec` (compiled now, off this thread, if not cached)."""
        grammar = self._entries.get(spec)
        if grammar is not None:
            self._entries.move_to_end(spec)
            return CompiledEntry(grammar, True, 0.0)
        pending = self._pending.get(spec)
        shared = pending is not None
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(self._executor, self._compile_timed, spec)
            self._pending[spec] = pending
            pending.add_done_callback(lambda done: self._finish(spec, done))
        grammar, seconds = await asyncio.shield(pending)
        return CompiledEntry(grammar, shared, 0.0 if shared else seconds)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # the event loop: bookkeeping

    def _finish(self, spec: GrammarSpec, done: asyncio.Future) -> None:
        self._pending.pop(spec, None)
        if done.cancelled() or done.exception() is not None:
            return
        grammar, _ = done.result()
        size = grammar.memory_size_bytes
        if size > self.budget_bytes:
            return  # served once, never kept
        while self.size_bytes + size > self.budget_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size_bytes -= evicted.memory_size_bytes
        self._entries[spec] = grammar
        self.size_bytes += size

    # worker threads: compiling

    def _compile_timed(self, spec: GrammarSpec) -> tuple[xgrammar.CompiledGrammar, float]:
        started = time.perf_counter()
        grammar = self.compile(spec)
        return grammar, time.perf_counter() - started

    def compile(self, spec: GrammarSpec) -> xgrammar.CompiledGrammar:
        """Compile `spec` now, in this thread (no cache); `GrammarError` if it cannot."""
        compiler = self._compiler_or_build()
        try:
            if spec.kind is GrammarKind.JSON_SCHEMA:
                # no free whitespace: small models otherwise pad JSON with spaces forever
                return compiler.compile_json_schema(spec.source, any_whitespace=False)
            if spec.kind is GrammarKind.JSON_OBJECT:
                return compiler.compile_json_schema('{"type": "object"}',
                                                    any_whitespace=False)
            if spec.kind is GrammarKind.REGEX:
                return compiler.compile_regex(spec.source)
            if spec.kind is GrammarKind.CHOICE:
                return compiler.compile_grammar(spec.choice_ebnf())
            return compiler.compile_grammar(spec.source)
        except (RuntimeError, ValueError, TypeError) as error:
            message = XGRAMMAR_LOCATION.sub("", str(error)).strip()
            raise GrammarError(f"the {spec.kind.value} constraint cannot be compiled: "
                               f"{message}") from error

    def _compiler_or_build(self) -> xgrammar.GrammarCompiler:
        with self._compiler_lock:
            if self._compiler is None:
                self._compiler = self._build_compiler()
            return self._compiler

    def _build_compiler(self) -> xgrammar.GrammarCompiler:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids)
        # this class keeps the cache (by spec, with a byte budget); xgrammar's is off
        return xgrammar.GrammarCompiler(info, max_threads=COMPILE_WORKERS, cache_enabled=False)
