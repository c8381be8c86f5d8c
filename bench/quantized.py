"""Quantized bases on this machine: resident memory after start-up and tokens per second.

`python -m bench.quantized` loads the builtin model once per variant (fp32, bf16, int8,
int4, and the GGUF's own Q4_1 blocks), each in a fresh process so that its resident set
after start-up is its own, then times greedy generation at batch 1 and 32 on the base and
at batch 64 spread over 32 random adapters (ranks 8-64). The variants alternate in one
run; the ratios against fp32 in the table come from that run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "quantized.json"
VARIANTS = {  # name -> engine settings
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
    "int8": {"dtype": "bfloat16", "quantize": "int8"},
    "int4": {"dtype": "bfloat16", "quantize": "int4"},
    "gguf-q4_1": {"dtype": "bfloat16", "quantize": "gguf"},
}
RANKS = (8, 16, 32, 64)


def measure(variant: str, new_tokens: int, adapters: int) -> dict[str, Any]:
    """One variant in this process (run as a child of `main`)."""
    import psutil

    from bench.engine import chat_prompts, run_engine
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.config import EngineConfig
    from loraplex.runtime.engine.engine import Engine
    from loraplex.runtime.engine.request import GenerationRequest, SamplingParams

    process = psutil.Process()
    config = EngineConfig(device="cpu", kv_cache_bytes=512 << 20, max_num_seqs=64,
                          device_slots=adapters, **VARIANTS[variant])
    engine = Engine(config)
    row: dict[str, Any] = {"variant": variant, "rss_mb": process.memory_info().rss / 1e6,
                           "weight_mb": engine.loaded.weight_bytes / 1e6}
    prompts = chat_prompts(engine.loaded.tokenizer, 64)
    run_engine(engine, prompts[:2], 2)  # warm-up
    for batch in (1, 32):
        elapsed, _ = run_engine(engine, prompts[:batch], new_tokens)
        row[f"tok_s_batch{batch}"] = batch * new_tokens / elapsed
    target = LoraTargetShapes.from_hf_config(engine.loaded.hf_config)
    with tempfile.TemporaryDirectory() as folder:
        for index in range(adapters):
            path = write_random_adapter(Path(folder) / f"a{index}", target,
                                        RANKS[index % len(RANKS)], seed=index)
            engine.adapters.register(f"a{index}", str(path))
        names = [f"a{i % adapters}" for i in range(64)]
        warm = [GenerationRequest(f"w{i}", prompts[i], SamplingParams(max_new_tokens=1),
                                  adapter=name) for i, name in enumerate(names[:adapters])]
        engine.generate(warm)  # every adapter on the device before timing
        requests = [GenerationRequest(f"m{i}", prompts[i], SamplingParams(
            max_new_tokens=new_tokens, ignore_eos=True), adapter=name)
            for i, name in enumerate(names)]
        started = time.perf_counter()
        engine.generate(requests)
        row["tok_s_batch64_adapters"] = 64 * new_tokens / (time.perf_counter() - started)
    engine.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.new_tokens, args.adapters)))
        return 0
    from bench.report import machine_info, write_json

    rows = []
    for variant in args.variants.split(","):
        output = subprocess.run(
            [sys.executable, "-m", "bench.quantized", "--child", variant, "--new-tokens",
             str(args.new_tokens), "--adapters", str(args.adapters)],
            capture_output=True, text=True, check=True)
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print("| variant | RSS MB | weights MB | tok/s b1 | tok/s b32 | tok/s b64 x adapters "
          "| b32 vs first |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['rss_mb']:.0f} | {row['weight_mb']:.0f} | "
              f"{row['tok_s_batch1']:.1f} | {row['tok_s_batch32']:.1f} | "
              f"{row['tok_s_batch64_adapters']:.1f} | "
              f"{row['tok_s_batch32'] / base['tok_s_batch32']:.2f}x |")
    write_json(RESULTS, {"machine": machine_info(), "new_tokens": args.new_tokens,
                         "adapters": args.adapters, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
