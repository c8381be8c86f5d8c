"""What a GPTQ checkpoint's layout costs on top of the int4 kernel (CPU).

A GPTQ linear quantized with `desc_act` is served with its inputs permuted
(`PermutedInputs`: one `index_select` of the activations before the product), and fused
shards whose permutations differ as separate products side by side (`SideBySide`).
`python -m bench.int4_layouts` times, at the builtin SmolLM2's fused shapes (q|k|v
576 -> 576+192+192, gate|up 576 -> 2 x 1536) and batch 1 and 32, the plain int4 product
against both, interleaved in one run, the median of repeated timings each.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from loraplex.runtime.layers.quantized import Int4Weight, QuantizedWeight
from loraplex.runtime.layers.quantized_parts import PermutedInputs, SideBySide

RESULTS = Path(__file__).resolve().parent / "results" / "int4_layouts.json"
SHAPES = {"qkv": (576, (576, 192, 192)), "gate_up": (576, (1536, 1536))}
GROUP_SIZE = 64


def layouts(in_features: int, parts: tuple[int, ...], dtype: torch.dtype
            ) -> dict[str, QuantizedWeight]:
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(size, in_features, generator=generator) * 0.02 for size in parts]
    orders = [torch.randperm(in_features, generator=generator) for _ in parts]
    fused = Int4Weight.quantize(torch.cat(weights).to(dtype), GROUP_SIZE)
    return {
        "plain": fused,
        "desc_act": PermutedInputs(Int4Weight.quantize(torch.cat(weights)[:, orders[0]].to(
            dtype), GROUP_SIZE), orders[0]),
        "side_by_side": SideBySide([PermutedInputs(Int4Weight.quantize(
            weight[:, order].to(dtype), GROUP_SIZE), order)
            for weight, order in zip(weights, orders, strict=True)]),
    }


def median_us(weight: QuantizedWeight, x: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        weight.linear(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args(argv)
    from bench.report import machine_info, write_json

    dtype = getattr(torch, args.dtype)
    rows = []
    print("| shape | batch | plain us | desc_act us | side by side us | desc_act vs plain "
          "| side by side vs plain |")
    print("|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for shape, (in_features, parts) in SHAPES.items():
            weights = layouts(in_features, parts, dtype)
            for batch in (1, 32):
                x = torch.randn(batch, in_features).to(dtype)
                for weight in weights.values():
                    median_us(weight, x, 20)  # warm-up
                times = {name: [] for name in weights}
                for _ in range(5):  # interleaved rounds, so load changes hit every layout
                    for name, weight in weights.items():
                        times[name].append(median_us(weight, x, args.repeats // 5))
                row = {"shape": shape, "batch": batch,
                       **{f"{name}_us": statistics.median(t) for name, t in times.items()}}
                rows.append(row)
                print(f"| {shape} | {batch} | {row['plain_us']:.0f} | {row['desc_act_us']:.0f} "
                      f"| {row['side_by_side_us']:.0f} | "
                      f"{row['desc_act_us'] / row['plain_us']:.2f}x | "
                      f"{row['side_by_side_us'] / row['plain_us']:.2f}x |")
    write_json(RESULTS, {"machine": machine_info(), "dtype": args.dtype,
                         "group_size": GROUP_SIZE, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
