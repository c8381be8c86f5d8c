"""Time to first token with and without prefix caching, on multi-adapter traffic.

Each of `--adapters` (4) random LoRA adapters has its own `--system-tokens` (1,000)-token
system prompt in front of every one of its requests, which differ only in a
`--question-tokens` (30)-token question; `--requests` (64) requests, adapters interleaved,
all arrive at once, and each generates `--new-tokens` (32) tokens (EOS ignored, greedy).
The same requests run on two fresh engines over the same loaded weights, prefix caching
off then on, in one process: time to first token (p50/p99, from the burst's arrival),
total generated tokens per second, the prefix cache hit rate (prompt tokens found / looked
up) and how many outputs are the same token for token. Builtin SmolLM2 in fp32 on the CPU
by default. Prints a table, writes JSON.

    python -m bench.prefix_cache
    python -m bench.prefix_cache --requests 32 --system-tokens 500
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine_info, write_json
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import ADAPTER_WAIT_S, Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.models.loader import LoadedModel, load_model


def build_requests(args: argparse.Namespace, vocab: int) -> list[GenerationRequest]:
    """Requests with ids 0..n-1, adapter `lora-{i % adapters}`, prompts of random tokens."""
    rng = random.Random(args.seed)
    systems = [[rng.randrange(10, vocab) for _ in range(args.system_tokens)]
               for _ in range(args.adapters)]
    requests = []
    for index in range(args.requests):
        adapter = index % args.adapters
        question = [rng.randrange(10, vocab) for _ in range(args.question_tokens)]
        requests.append(GenerationRequest(
            str(index), systems[adapter] + question,
            SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True),
            adapter=f"lora-{adapter}"))
    return requests


def make_engine(args: argparse.Namespace, loaded: LoadedModel, adapter_root: Path,
                prefix_caching: bool) -> Engine:
    config = EngineConfig(model=args.model, device="cpu", dtype="float32",
                          kv_cache_bytes=args.kv_cache_mib << 20, device_slots=args.adapters,
                          max_lora_rank=args.rank, prefix_caching=prefix_caching)
    engine = Engine(config, loaded)
    for index in range(args.adapters):
        engine.adapters.register(f"lora-{index}", str(adapter_root / f"lora-{index}"))
    # every adapter onto the device first, on a prompt that shares nothing with the runs
    engine.generate([GenerationRequest(f"warm-{index}", [5, 6, 7],
                                       SamplingParams(max_new_tokens=1),
                                       adapter=f"lora-{index}")
                     for index in range(args.adapters)])
    return engine


def run_burst(engine: Engine, requests: list[GenerationRequest]) -> dict[str, Any]:
    """All requests arrive at once; first-token times are taken as each step returns."""
    first_token_s: dict[str, float] = {}
    outputs: dict[str, list[int]] = {request.request_id: [] for request in requests}
    started = time.perf_counter()
    for request in requests:
        engine.add_request(request)
    while engine.has_unfinished():
        events = engine.step()
        now = time.perf_counter() - started
        for event in events:
            if event.token_id is not None:
                outputs[event.request_id].append(event.token_id)
                first_token_s.setdefault(event.request_id, now)
        if not engine.last_step_ran:
            time.sleep(ADAPTER_WAIT_S)
    elapsed = time.perf_counter() - started
    ttft = np.array(list(first_token_s.values()))
    cache = engine.stats().prefix_cache
    generated = sum(len(tokens) for tokens in outputs.values())
    return {
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "elapsed_s": elapsed,
        "generated_tokens": generated,
        "tokens_per_s": generated / elapsed,
        "prefix_cache_queries": cache.total_queries,
        "prefix_cache_hits": cache.total_hits,
        "hit_rate": cache.total_hits / cache.total_queries if cache.total_queries else 0.0,
        "preemptions": engine.stats().num_preemptions,
        "outputs": outputs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--question-tokens", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--kv-cache-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/prefix_cache.json"))
    args = parser.parse_args()

    loaded = load_model(EngineConfig(model=args.model, device="cpu", dtype="float32"))
    target = LoraTargetShapes.from_hf_config(loaded.hf_config)
    requests = build_requests(args, loaded.hf_config.vocab_size)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as root:
        for index in range(args.adapters):
            write_random_adapter(Path(root) / f"lora-{index}", target, args.rank, seed=index)
        for label, enabled in (("off", False), ("on", True)):
            engine = make_engine(args, loaded, Path(root), enabled)
            try:
                results[label] = run_burst(engine, requests)
            finally:
                engine.close()
    same = sum(results["on"]["outputs"][r.request_id] == results["off"]["outputs"][r.request_id]
               for r in requests)
    print(f"{args.requests} requests, {args.adapters} adapters, {args.system_tokens}-token "
          f"system prompt + {args.question_tokens}-token question, {args.new_tokens} new "
          "tokens, all arriving at once")
    print(f"{'caching':>8} {'TTFT p50 s':>11} {'TTFT p99 s':>11} {'tokens/s':>9} "
          f"{'hit rate':>9} {'preempted':>9}")
    for label, row in results.items():
        print(f"{label:>8} {row['ttft_p50_s']:>11.2f} {row['ttft_p99_s']:>11.2f} "
              f"{row['tokens_per_s']:>9.1f} {row['hit_rate']:>9.1%} {row['preemptions']:>9}")
    speedup = results["off"]["ttft_p50_s"] / results["on"]["ttft_p50_s"]
    print(f"TTFT p50 {speedup:.1f}x lower with caching; {same}/{len(requests)} outputs "
          "identical")
    for row in results.values():
        del row["outputs"]
    write_json(args.out, {"benchmark": "prefix_cache", "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(), "results": results, "ttft_p50_speedup": speedup,
        "identical_outputs": same})


if __name__ == "__main__":
    main()
