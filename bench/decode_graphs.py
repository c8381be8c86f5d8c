"""Decode step time with and without CUDA graphs, on the same model, prompts and GPU.

Two engines share one dummy-weight model (`--model`, default the smollm2-135m shape, bf16,
whose small kernels make launches the main cost): one with `enforce_eager`, one that
replays the captured decode graphs. For each batch size and number of distinct adapters
(rank 16, all seven projections; 0: base model only, rows spread round-robin), every
request prefills a chat prompt and then decodes `--new-tokens` tokens greedily. A first run
loads the adapters and captures the graphs; the second run's decode steps (every step
after the first, which prefills) give the median step time. Prints a table, writes JSON.
Needs CUDA.

    python -m bench.decode_graphs
    python -m bench.decode_graphs --model llama-3-8b --batches 1,32 --adapters 0,8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.engine import chat_prompts
from bench.report import machine_info, write_json
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.models.loader import load_model

RANK = 16


def decode_steps(engine: Engine, prompts: list[list[int]], adapters: list[str | None],
                 new_tokens: int) -> tuple[list[float], list[list[int]]]:
    """Seconds of each step after the first (the prefill), and every request's tokens."""
    stamp = time.monotonic_ns()
    ids = [f"bench-{stamp}-{index}" for index in range(len(prompts))]
    for request_id, prompt, adapter in zip(ids, prompts, adapters, strict=True):
        engine.add_request(GenerationRequest(request_id, prompt, SamplingParams(
            max_new_tokens=new_tokens, ignore_eos=True), adapter=adapter))
    tokens: dict[str, list[int]] = {request_id: [] for request_id in ids}
    steps: list[float] = []
    while engine.has_unfinished():
        started = time.perf_counter()
        events = engine.step()  # ends in a sync: the sampled tokens reach the host
        elapsed = time.perf_counter() - started
        if not engine.last_step_ran:
            time.sleep(0.002)  # an adapter is still loading
            continue
        steps.append(elapsed)
        for event in events:
            if event.error:
                raise RuntimeError(f"bench request failed: {event.error}")
            if event.token_id is not None:
                tokens[event.request_id].append(event.token_id)
    return steps[1:], [tokens[request_id] for request_id in ids]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a dummy shape")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--adapters", default="0,8", help="distinct adapters per batch")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", default="bench/results/decode_graphs.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.decode_graphs needs CUDA: nothing to compare on this machine")
        return 0
    batches = [int(b) for b in args.batches.split(",")]
    adapter_counts = [int(a) for a in args.adapters.split(",")]

    base = dict(model=args.model, load_format="dummy", dtype=args.dtype, device="cuda",
                max_num_seqs=max(batches), max_model_len=1024, kv_cache_bytes=1 << 30,
                device_slots=max(max(adapter_counts), 1), max_lora_rank=RANK)
    loaded = load_model(EngineConfig(**base))
    engines = {"eager": Engine(EngineConfig(**base, enforce_eager=True), loaded),
               "graph": Engine(EngineConfig(**base), loaded)}
    prompts = chat_prompts(loaded.tokenizer, max(batches))
    target = LoraTargetShapes.from_hf_config(loaded.hf_config)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(max(adapter_counts)):
            path = write_random_adapter(Path(folder) / f"a{index}", target, RANK, seed=index,
                                        dtype=torch.bfloat16)
            for engine in engines.values():
                engine.adapters.register(f"a{index}", str(path))
        for count in adapter_counts:
            for batch in batches:
                names = [f"a{row % count}" if count else None for row in range(batch)]
                chosen = prompts[:batch]
                timed: dict[str, float] = {}
                outputs: dict[str, list[list[int]]] = {}
                for name, engine in engines.items():
                    for _ in range(2):  # the first run loads adapters and captures graphs
                        steps, outputs[name] = decode_steps(engine, chosen, names,
                                                            args.new_tokens)
                    timed[name] = statistics.median(steps)
                same = sum(a == b for x, y in zip(outputs["eager"], outputs["graph"],
                                                  strict=True)
                           for a, b in zip(x, y, strict=True)) / (batch * args.new_tokens)
                rows.append({"batch": batch, "adapters": count,
                             "eager_ms": 1000 * timed["eager"],
                             "graph_ms": 1000 * timed["graph"],
                             "speedup": timed["eager"] / timed["graph"], "same_tokens": same})
                print(f"batch {batch:>3}, {count:>2} adapters: eager {rows[-1]['eager_ms']:.2f} "
                      f"ms/step, graphs {rows[-1]['graph_ms']:.2f} ms/step", flush=True)
    graphs = engines["graph"].runner.decode_graphs
    for engine in engines.values():
        engine.close()

    print(f"\ndecode step, {args.model} {args.dtype} on {torch.cuda.get_device_name()}, "
          f"{graphs.num_graphs if graphs else 0} graphs captured")
    print(f"{'batch':>5} {'adapters':>8} {'eager ms':>9} {'graph ms':>9} {'speedup':>8} "
          f"{'same tokens':>12}")
    for row in rows:
        print(f"{row['batch']:>5} {row['adapters']:>8} {row['eager_ms']:>9.2f} "
              f"{row['graph_ms']:>9.2f} {row['speedup']:>8.2f} {row['same_tokens']:>12.1%}")
    out = Path(args.out)
    write_json(out, {"model": args.model, "dtype": args.dtype, "device": "cuda",
                     "new_tokens": args.new_tokens, "rank": RANK,
                     "machine": machine_info("cuda"), "rows": rows})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
