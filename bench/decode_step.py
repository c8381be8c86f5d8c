"""A CPU decode step of the engine beside what the machine's bytes and FLOPs allow.

Throughput figures (`bench.adapters`) include each batch's prefill; this isolates the
decode step: the same batch is generated for 1 and for 1 + N tokens, alternating, and the
step is the difference over N. The bound is measured on the same machine in the same run:
the weights' bytes at the bandwidth of a large fp32 sum, and the step's linear FLOPs at the
rate of a large matmul in the model's dtype, with the same torch threads. The bound is the
base model's: with `--adapters` it leaves out the adapters' bytes.

    python -m bench.decode_step --batch 16 --dtype float32 [--quantize int4] [--adapters 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.adapters import KV_CACHE_BYTES, chat_texts, run_engine
from bench.report import machine_info, write_json
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.models.loader import load_model

RANKS = (8, 16, 32, 64)


def bandwidth_bytes_per_s(size_bytes: int = 1 << 30) -> float:
    """Read bandwidth: the best of 5 fp32 sums over a tensor far larger than the caches
    (the rate bytes come from memory at, whatever dtype they hold)."""
    data = torch.ones(size_bytes // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return size_bytes / best


def matmul_flops_per_s(dtype: torch.dtype, size: int = 2048) -> float:
    """Dense matmul rate: the best of 5 [size x size] products."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quantize", default="none", help="none, int8 or int4 (weight-only)")
    parser.add_argument("--adapters", type=int, default=0, help="distinct adapters (0: base)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="bench/results/decode_step.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(dtype=args.dtype, quantize=args.quantize, max_num_seqs=max(args.batch, 1),
                          device_slots=max(args.adapters, 1), max_lora_rank=max(RANKS),
                          kv_cache_bytes=KV_CACHE_BYTES, prefix_caching=False, device="cpu")
    loaded = load_model(config)
    prompts = [list(loaded.tokenizer.encode(text))
               for text in chat_texts(loaded.tokenizer, args.batch)]
    with tempfile.TemporaryDirectory() as scratch:
        engine = Engine(config, loaded)
        try:
            names = [f"r{RANKS[i % len(RANKS)]}-{i}" for i in range(args.adapters)]
            target = LoraTargetShapes.from_hf_config(loaded.hf_config)
            for index, name in enumerate(names):
                rank = RANKS[index % len(RANKS)]
                folder = write_random_adapter(Path(scratch) / name, target, rank, seed=index)
                engine.adapters.register(name, str(folder))
            adapters = [names[i % len(names)] if names else None for i in range(args.batch)]
            run_engine(engine, prompts, adapters, 2)  # warm-up: adapters loaded
            steps = []
            for _ in range(args.repeats):
                prefill = run_engine(engine, prompts, adapters, 1)
                whole = run_engine(engine, prompts, adapters, 1 + args.steps)
                steps.append((whole - prefill) / args.steps)
        finally:
            engine.close()
    model = engine_model_numbers(loaded, args.batch)
    bandwidth = bandwidth_bytes_per_s()
    flops = matmul_flops_per_s(loaded.dtype)
    bound = max(model["weight_bytes"] / bandwidth, model["linear_flops"] / flops)
    step = statistics.median(steps)
    print(f"batch {args.batch}, {args.adapters} adapters, {loaded.dtype}, {args.quantize}, "
          f"{torch.get_num_threads()} threads: decode step {step * 1e3:.1f} ms "
          f"(runs {', '.join(f'{s * 1e3:.1f}' for s in steps)})")
    print(f"bound: weights {model['weight_bytes'] / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s "
          f"= {model['weight_bytes'] / bandwidth * 1e3:.1f} ms; linears "
          f"{model['linear_flops'] / 1e9:.2f} GFLOP at {flops / 1e9:.0f} GFLOP/s = "
          f"{model['linear_flops'] / flops * 1e3:.1f} ms; step / bound {step / bound:.2f}x")
    write_json(Path(args.out), {
        "batch": args.batch, "adapters": args.adapters,
        "dtype": str(loaded.dtype).removeprefix("torch."), "quantize": args.quantize,
        "step_ms": step * 1e3,
        "step_runs_ms": [s * 1e3 for s in steps], "bound_ms": bound * 1e3,
        "bandwidth_gb_s": bandwidth / 1e9, "matmul_gflop_s": flops / 1e9, **model,
        "machine": machine_info("cpu")})
    return 0


def engine_model_numbers(loaded, batch: int) -> dict[str, float]:
    """Bytes a decode step reads, and its FLOPs: every matrix once per row.

    The weights as served that a step reads whole (`streamed_weight_bytes`: the linears, the
    norms and the LM head, not the embedding table, of which the lookup reads a few rows);
    every parameter multiplies each row once (the embedding as the LM head).
    """
    return {"weight_bytes": float(loaded.model.streamed_weight_bytes()),
            "linear_flops": float(2 * batch * loaded.num_parameters)}


if __name__ == "__main__":
    raise SystemExit(main())
