"""A decode step's linears on a CPU: the compiled panel kernels against torch's paths.

Every projection of the builtin model's shapes (q|k|v, o, gate|up, down of each layer, and
the LM head), each layer with its own (random) weight so that, as in a real step, the
weights come from memory and not from cache; rows 1/4/16/64 (decode batches) and 256/1024
(prefill chunks). Both paths run alternately, the best of several runs each; the kernel's
outputs are checked against the other path's first.
- fp32 (default): `cpu_linear`'s panels against oneDNN's packed GEMM.
- `--quantized int4|int8`: `cpu_quantized_linear`'s panels against torch's weight-only
  kernels (`_weight_int4pack_mm_for_cpu`, groups of 32; `_weight_int8pack_mm`, or one bf16
  product from 16 rows), on bf16 rows as a quantized model's server runs them.

    python -m bench.linear [--threads N] [--rows 1,16,1024] [--quantized int4]

Prints a table and writes `bench/results/linear_cpu.json` (or `linear_cpu_int4.json`, or
`--out`).
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
from loraplex.runtime.layers.quantized import Int4Weight, Int8Weight
from loraplex.runtime.models.loader import load_model

RESULTS = Path(__file__).resolve().parent / "results"
INT4_GROUP = 32  # --quantize int4's default
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


Product = Callable[[torch.Tensor], torch.Tensor]


def products(mode: str, weight: torch.Tensor) -> tuple[Product, Product]:
    """(torch's path, the kernel's) for one weight [N, K] in `mode` (fp32, int4, int8)."""
    if mode == "fp32":
        onednn, panels = torch.ops.mkldnn._reorder_linear_weight(weight), cpu_linear.pack(weight)
        return (lambda x: torch.ops.mkldnn._linear_pointwise(x, onednn, None, "none", [], ""),
                lambda x: cpu_linear.linear(x, panels, weight.shape[0], None))
    bf16 = weight.bfloat16()
    if mode == "int4":
        pair = [Int4Weight.quantize(bf16, INT4_GROUP, kernel=k) for k in ("cpu", "panels")]
    else:
        pair = [Int8Weight.quantize(bf16, kernel=k) for k in ("torch", "panels")]
    return pair[0].linear, pair[1].linear


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--rows", default="1,4,16,64,256,1024")
    parser.add_argument("--quantized", choices=("int4", "int8"), help="weight-only kernels")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_linear.available():
        raise SystemExit("the compiled kernel is not available on this machine")
    mode = args.quantized or "fp32"
    groups = model_weights()
    paths = {name: [products(mode, w) for w in weights] for name, weights in groups.items()}
    row_dtype = torch.float32 if mode == "fp32" else torch.bfloat16
    results = []
    baseline = "oneDNN" if mode == "fp32" else "torch"
    print(f"{'rows':>5} {'projection':>12} {baseline + ' ms':>10} {'kernel ms':>10} {'ratio':>6}")
    for rows in (int(item) for item in args.rows.split(",")):
        totals = [0.0, 0.0]
        for name, weights in groups.items():
            x = torch.randn(rows, weights[0].shape[1]).to(row_dtype)
            want, got = (path(x).float() for path in paths[name][0])
            # fp32: the same products; quantized: torch's path rounds through bf16
            assert (got - want).abs().max() <= (1e-4 if mode == "fp32" else 2e-2) * max(
                1.0, want.abs().max().item()), name
            seconds = [best_seconds(lambda x=x, side=side, name=name: [
                pair[side](x) for pair in paths[name]]) for side in (0, 1)]
            totals = [total + s for total, s in zip(totals, seconds, strict=True)]
            results.append({"rows": rows, "projection": name, "layers": len(weights),
                            "torch_ms": seconds[0] * 1e3, "kernel_ms": seconds[1] * 1e3})
            print(f"{rows:>5} {name:>12} {seconds[0] * 1e3:>10.2f} {seconds[1] * 1e3:>10.2f} "
                  f"{seconds[1] / seconds[0]:>6.2f}")
        print(f"{rows:>5} {'all':>12} {totals[0] * 1e3:>10.2f} {totals[1] * 1e3:>10.2f} "
              f"{totals[1] / totals[0]:>6.2f}")
        results.append({"rows": rows, "projection": "all", "torch_ms": totals[0] * 1e3,
                        "kernel_ms": totals[1] * 1e3})
    suffix = "" if mode == "fp32" else f"_{mode}"
    write_json(args.out or RESULTS / f"linear_cpu{suffix}.json",
               {"mode": mode, "baseline": baseline, "results": results,
                "machine": machine_info("cpu")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
