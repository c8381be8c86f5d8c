"""A decode step's linears on a CPU: the compiled panel kernel against oneDNN's packed GEMM.

Every projection of the builtin model's shapes (q|k|v, o, gate|up, down of each layer, and
the LM head) in fp32, each layer with its own (random) weight so that, as in a real step,
the weights come from memory and not from cache; rows 1/4/16/64 (decode batches) and
256/1024 (prefill chunks). Both paths run alternately, the best of several runs each; the
kernel's outputs are checked against oneDNN's first.

    python -m bench.linear [--threads N] [--rows 1,16,1024]

Prints a table and writes `bench/results/linear_cpu.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.report import machine_info, write_json
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.kernels import cpu_linear
from loraplex.runtime.models.loader import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "linear_cpu.json"
RUNS = 5


def best_seconds(run: Callable[[], None]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def model_weights() -> dict[str, list[torch.Tensor]]:
    """Random fp32 weights [N, K] of the builtin model's projections, one per layer."""
    config = load_model(EngineConfig(dtype="float32", device="cpu")).hf_config
    hidden, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    shapes = {
        "qkv_proj": ((config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim,
                     hidden),
        "o_proj": (hidden, config.num_attention_heads * head_dim),
        "gate_up_proj": (2 * config.intermediate_size, hidden),
        "down_proj": (hidden, config.intermediate_size),
    }
    generator = torch.Generator().manual_seed(0)
    groups = {name: [torch.randn(shape, generator=generator) / shape[1] ** 0.5
                     for _ in range(config.num_hidden_layers)]
              for name, shape in shapes.items()}
    groups["lm_head"] = [torch.randn(config.vocab_size, hidden, generator=generator)]
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--rows", default="1,4,16,64,256,1024")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_linear.supports(torch.empty(1, 1)):
        raise SystemExit("the compiled kernel is not available on this machine")
    groups = model_weights()
    onednn = {name: [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
              for name, weights in groups.items()}
    panels = {name: [cpu_linear.pack(w) for w in weights] for name, weights in groups.items()}
    results = []
    print(f"{'rows':>5} {'projection':>10} {'oneDNN ms':>10} {'kernel ms':>10} {'ratio':>6}")
    for rows in (int(item) for item in args.rows.split(",")):
        totals = [0.0, 0.0]
        for name, weights in groups.items():
            x = torch.randn(rows, weights[0].shape[1])
            want = torch.ops.mkldnn._linear_pointwise(x, onednn[name][0], None, "none", [], "")
            got = cpu_linear.linear(x, panels[name][0], weights[0].shape[0], None)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            seconds = [
                best_seconds(lambda name=name, x=x: [torch.ops.mkldnn._linear_pointwise(
                    x, w, None, "none", [], "") for w in onednn[name]]),
                best_seconds(lambda name=name, x=x, n=weights[0].shape[0]: [
                    cpu_linear.linear(x, p, n, None) for p in panels[name]]),
            ]
            totals = [total + s for total, s in zip(totals, seconds, strict=True)]
            results.append({"rows": rows, "projection": name, "layers": len(weights),
                            "onednn_ms": seconds[0] * 1e3, "kernel_ms": seconds[1] * 1e3})
            print(f"{rows:>5} {name:>10} {seconds[0] * 1e3:>10.2f} {seconds[1] * 1e3:>10.2f} "
                  f"{seconds[1] / seconds[0]:>6.2f}")
        print(f"{rows:>5} {'all':>10} {totals[0] * 1e3:>10.2f} {totals[1] * 1e3:>10.2f} "
              f"{totals[1] / totals[0]:>6.2f}")
        results.append({"rows": rows, "projection": "all", "onednn_ms": totals[0] * 1e3,
                        "kernel_ms": totals[1] * 1e3})
    write_json(args.out, {"results": results, "machine": machine_info("cpu")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
