"""Structured output: decode throughput with 0%, 50% and 100% of a batch constrained, and
grammar compile time per schema.

A batch of `--batch` (32) chat requests, greedy, `--new-tokens` (64) tokens each, on the
builtin SmolLM2-135M (fp32, CPU by default). Constrained requests follow a nested JSON
schema (a list of at least 20 orders, each an object with an id, a customer object and a
bounded array of items) that cannot be complete within the token budget, so constrained
and free requests alike generate exactly `--new-tokens` tokens (free ones ignore EOS) and
the runs compute the same number of tokens. Runs alternate (0, 50, 100, 0, ...) for
`--repeats` rounds and the fastest of each is kept; the ratio to the unconstrained run
is measured within this one process. Free requests of the mixed batch must produce the
same tokens as in the unconstrained run ("same tokens"). Compile times are for a cold
compiler (no cache), per schema, after the tokenizer's one-off preparation. The mask's own
cost per decode step (filling `--batch` rows from their matchers and masking the logits,
matchers walked through the nested schema by random logits) is timed apart from the model,
since on a shared machine whole runs minutes apart see different loads. `--repeats 0`
measures only compile and mask costs. Prints tables, writes JSON.

    python -m bench.structured
    python -m bench.structured --batch 32 --new-tokens 64 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import torch
import xgrammar

from bench.engine import chat_prompts
from bench.report import machine_info, write_json
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.layers.grammar_mask import GrammarBitmask
from loraplex.runtime.models.loader import load_model
from loraplex.runtime.structured.grammar_cache import GrammarCache
from loraplex.runtime.structured.grammar_spec import GrammarSpec

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
COUNT = {"type": "integer", "minimum": 0, "maximum": 9999}
ORDERS = {"type": "object", "properties": {"orders": {
    "type": "array", "minItems": 20, "maxItems": 40, "items": {
        "type": "object", "properties": {
            "id": COUNT,
            "customer": {"type": "object", "properties": {
                "name": NAME, "tier": {"enum": ["gold", "silver", "bronze"]}},
                "required": ["name", "tier"]},
            "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "properties": {"sku": {"type": "string",
                                                         "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                                                 "qty": COUNT},
                "required": ["sku", "qty"]}}},
        "required": ["id", "customer", "items"]}}}, "required": ["orders"]}
COMPILE_CASES = {
    "integer": GrammarSpec.json_schema(COUNT),
    "flat object": GrammarSpec.json_schema({"type": "object", "properties": {
        "name": NAME, "age": COUNT, "admin": {"type": "boolean"}},
        "required": ["name", "age", "admin"]}),
    "enums + anyOf": GrammarSpec.json_schema({"type": "object", "properties": {
        "color": {"enum": ["red", "green"]}, "value": {"anyOf": [NAME, COUNT]}},
        "required": ["color", "value"]}),
    "string pattern": GrammarSpec.json_schema({"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}, "required": ["code"]}),
    "nested orders": GrammarSpec.json_schema(ORDERS),
    "any JSON object": GrammarSpec.json_object(),
    "regex (date)": GrammarSpec.regex(r"\d{4}-\d{2}-\d{2}"),
    "choice (3)": GrammarSpec.choice(["yes", "no", "maybe"]),
}


def run_batch(engine: Engine, prompts: list[list[int]], grammar, share: float,
              new_tokens: int) -> tuple[float, dict[int, tuple[int, ...]]]:
    """Seconds for the batch, and the tokens of each request."""
    interleaved = list(range(0, len(prompts), 2)) + list(range(1, len(prompts), 2))
    constrained = set(interleaved[:round(len(prompts) * share)])  # spread over the batch
    stamp = time.monotonic_ns()
    requests = [GenerationRequest(f"s-{stamp}-{i}", prompt, SamplingParams(
        max_new_tokens=new_tokens, ignore_eos=True),
        grammar=grammar if i in constrained else None) for i, prompt in enumerate(prompts)]
    started = time.perf_counter()
    results = engine.generate(requests)
    seconds = time.perf_counter() - started
    tokens = {i: tuple(e.token_id for e in results[r.request_id] if e.token_id is not None)
              for i, r in enumerate(requests)}
    assert all(len(tokens[i]) == new_tokens for i in tokens), "a request ended early"
    return seconds, {i: t for i, t in tokens.items() if i not in constrained}


def mask_seconds_per_step(grammar, vocab_size: int, rows: int, steps: int) -> float:
    """Mean time of one step's grammar masks for `rows` constrained rows (fill + apply)."""
    matchers = [xgrammar.GrammarMatcher(grammar) for _ in range(rows)]
    bitmask = GrammarBitmask(vocab_size, rows, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(steps):
        logits = torch.randn(rows, vocab_size, generator=generator)  # [rows, vocab]
        started = time.perf_counter()
        bitmask.build(matchers).apply(logits)
        total += time.perf_counter() - started
        for matcher, token in zip(matchers, logits.argmax(dim=-1).tolist(), strict=True):
            matcher.accept_token(token)
    return total / steps


def compile_times(engine: Engine) -> dict[str, float]:
    cache = GrammarCache(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, 0)
    cache.compile(GrammarSpec.choice(["warm"]))  # the tokenizer's one-off preparation
    times = {}
    for name, spec in COMPILE_CASES.items():
        started = time.perf_counter()
        cache.compile(spec)
        times[name] = time.perf_counter() - started
    cache.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/structured.json"))
    args = parser.parse_args()
    config = EngineConfig(model=args.model, max_num_seqs=args.batch, dtype="float32")
    engine = Engine(config, load_model(config))
    prompts = chat_prompts(engine.tokenizer, args.batch)
    cache = GrammarCache(engine.tokenizer, engine.vocab_size, engine.eos_token_ids, 1 << 30)
    grammar = asyncio.run(cache.get(GrammarSpec.json_schema(ORDERS))).grammar
    if args.repeats:
        run_batch(engine, prompts[:4], grammar, 0.5, 4)  # warm-up
    best: dict[float, float] = {}
    free_tokens: dict[float, dict[int, tuple[int, ...]]] = {}
    for _ in range(args.repeats):
        for share in (0.0, 0.5, 1.0):
            seconds, tokens = run_batch(engine, prompts, grammar, share, args.new_tokens)
            print(f"  run: {share:.0%} constrained, {seconds:.1f} s", flush=True)
            best[share] = min(best.get(share, seconds), seconds)
            free_tokens[share] = tokens
    total = args.batch * args.new_tokens
    rows = []
    if best:
        print(f"batch {args.batch}, {args.new_tokens} new tokens each, greedy, best of "
              f"{args.repeats}")
        print(f"{'constrained':>12} {'tokens/s':>10} {'vs free':>8} {'same tokens':>12}")
    for share, seconds in best.items():
        same = all(free_tokens[0.0][i] == t for i, t in free_tokens[share].items())
        ratio = best[0.0] / seconds
        rows.append({"constrained_share": share, "seconds": seconds,
                     "tokens_per_s": total / seconds, "ratio_to_free": ratio,
                     "free_rows_same_tokens": same})
        print(f"{share:>11.0%} {total / seconds:>10.1f} {ratio:>7.2f}x {str(same):>12}")
    mask_s = mask_seconds_per_step(grammar, engine.vocab_size, args.batch, args.new_tokens)
    print(f"\ngrammar masks of {args.batch} constrained rows: {mask_s * 1e3:.2f} ms per step")
    times = compile_times(engine)
    print(f"\n{'schema':>16} {'compile ms':>11}")
    for name, seconds in times.items():
        print(f"{name:>16} {seconds * 1e3:>11.1f}")
    write_json(args.out, {"machine": machine_info(), "args": vars(args) | {"out": str(args.out)},
                          "throughput": rows, "mask_ms_per_step": mask_s * 1e3,
                          "compile_ms": {name: s * 1e3 for name, s in times.items()},
                          "schema": json.loads(GrammarSpec.json_schema(ORDERS).source)})


if __name__ == "__main__":
    main()
