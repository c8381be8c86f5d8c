"""Engine throughput against transformers `generate`, on the same prompts and machine.

Greedy decoding of the builtin SmolLM2-135M (fp32, CPU by default), `--new-tokens` (64)
tokens per prompt, at batch 1, 8 and 32: our continuous-batching engine (paged KV cache,
no padding) against `AutoModelForCausalLM.generate` on the same weights (left-padded
batch, its own KV cache). Both must produce every token (EOS ignored), both run in this
process with the same torch threads, alternately. EOS does not end or alter generation on
either side (the engine's `ignore_eos`; `generate` with no EOS id), so both compute the
same tokens: the table's "same tokens" column checks that. Prints a table, writes JSON.

    python -m bench.engine
    python -m bench.engine --batches 1,8,32 --new-tokens 64 --repeats 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench.report import machine_info, write_json
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.models.loader import load_model

QUESTIONS = [
    "What is the capital of France?", "hi", "Write a haiku about the sea.",
    "List three primary colors.", "Explain photosynthesis in one paragraph.",
    "Write a Python function that reverses a string.", "What is 12 times 12?",
    "Give me a short motivational quote about learning.", "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Translate 'good morning' into Spanish, French and German.",
    "What are the health benefits of regular exercise? Answer with a bulleted list of "
    "five items, each with a one-sentence explanation.",
    "Describe how a bicycle works to a five-year-old.", "Name a famous painter.",
    "How do vaccines train the immune system to recognize a virus without causing the "
    "disease itself? Keep it simple and mention antibodies and memory cells.",
    "Suggest a name for a pet goldfish.",
]


def chat_prompts(tokenizer, count: int) -> list[list[int]]:
    prompts = []
    for index in range(count):
        question = QUESTIONS[index % len(QUESTIONS)]
        if index >= len(QUESTIONS):
            question = f"{question} (variant {index // len(QUESTIONS)})"
        prompts.append(list(tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True)))
    return prompts


def run_engine(engine: Engine, prompts: list[list[int]], new_tokens: int
               ) -> tuple[float, list[list[int]]]:
    stamp = time.monotonic_ns()
    requests = [GenerationRequest(f"bench-{stamp}-{i}", prompt, SamplingParams(
        max_new_tokens=new_tokens, ignore_eos=True)) for i, prompt in enumerate(prompts)]
    started = time.perf_counter()
    results = engine.generate(requests)
    elapsed = time.perf_counter() - started
    return elapsed, [[e.token_id for e in results[r.request_id]] for r in requests]


def run_transformers(model, prompts: list[list[int]], new_tokens: int, pad_id: int
                     ) -> tuple[float, list[list[int]]]:
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                max_new_tokens=new_tokens, eos_token_id=None,
                                pad_token_id=pad_id)
    elapsed = time.perf_counter() - started
    return elapsed, output[:, width:].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs; the best counts")
    parser.add_argument("--out", default="bench/results/engine.json")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    config = EngineConfig(model=args.model, dtype="float32", device="cpu",
                          max_num_seqs=max(batches), kv_cache_bytes=1 << 30)
    loaded = load_model(config)
    engine = Engine(config, loaded)
    reference = AutoModelForCausalLM.from_pretrained(loaded.folder,
                                                     dtype=torch.float32).eval()
    prompts = chat_prompts(loaded.tokenizer, max(batches))
    pad_id = loaded.tokenizer.pad_token_id or loaded.eos_token_ids[0]
    rows = []
    for batch in batches:
        chosen = prompts[:batch]
        run_engine(engine, chosen, 4)  # warm-up
        run_transformers(reference, chosen, 4, pad_id)
        ours_s = theirs_s = float("inf")
        for _ in range(args.repeats):
            elapsed, ours_tokens = run_engine(engine, chosen, args.new_tokens)
            ours_s = min(ours_s, elapsed)
            elapsed, their_tokens = run_transformers(reference, chosen, args.new_tokens, pad_id)
            theirs_s = min(theirs_s, elapsed)
        generated = batch * args.new_tokens
        same = sum(a == b for x, y in zip(ours_tokens, their_tokens, strict=True)
                   for a, b in zip(x, y, strict=True))
        rows.append({
            "batch": batch, "new_tokens": args.new_tokens,
            "prompt_tokens": sum(len(p) for p in chosen),
            "engine_tokens_per_s": generated / ours_s,
            "transformers_tokens_per_s": generated / theirs_s,
            "ratio": theirs_s / ours_s, "engine_s": ours_s, "transformers_s": theirs_s,
            "same_tokens": same / generated,
        })
        print(f"batch {batch:>3}: engine {rows[-1]['engine_tokens_per_s']:8.1f} tok/s  "
              f"transformers {rows[-1]['transformers_tokens_per_s']:8.1f} tok/s  "
              f"ratio {rows[-1]['ratio']:.2f}", flush=True)

    print()
    print(f"{'batch':>5} {'engine tok/s':>13} {'transformers tok/s':>19} {'ratio':>6} "
          f"{'same tokens':>12}")
    for row in rows:
        print(f"{row['batch']:>5} {row['engine_tokens_per_s']:>13.1f} "
              f"{row['transformers_tokens_per_s']:>19.1f} {row['ratio']:>6.2f} "
              f"{row['same_tokens']:>12.1%}")
    result = {
        "model": args.model, "dtype": "float32", "device": "cpu", "greedy": True,
        "machine": machine_info(),
        "rows": rows,
    }
    out = Path(args.out)
    write_json(out, result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
