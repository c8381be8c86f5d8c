"""The int4 dequantize-GEMM on a GPU against the bf16 GEMM it replaces, at Llama-3-8B shapes.

Each of one decoder layer's four projections (q|k|v, o, gate|up, down; groups of 128) at
batch 1/16/64 (decode) and 512/2048 (prefill), in bf16 activations, timed as:
- `bf16`: `F.linear` on the full-precision weight (cuBLAS), the reference speed;
- `int4`: the Triton kernel (`Int4Weight.linear` on CUDA), with its GB/s over the bytes
  it must move (x, codes, group tables, y: what it reports to `launch_costs`);
- `nf4`: the same kernel reading NF4 codes through their codebook (`CodebookWeight.linear`,
  blocks of 64: the bitsandbytes / QLoRA base);
- `dequantize`: dequantizing the whole weight, then `F.linear` (the path off CUDA);
- `tinygemm`: torch's own int4 kernel (`aten._weight_int4pack_mm`), where this torch has it.
Decode is bound by reading the weight: int4 moves about 0.27x the bytes of bf16, so the
goal there is a time well under bf16's; prefill is bound by the dot, where int4 pays its
dequantization per tile and should stay near bf16. Needs CUDA.

    python -m bench.int4_gemm [--quick]

Prints a table and writes `bench/results/int4_gemm_cuda.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.report import cuda_seconds
from loraplex.runtime.kernels.launch_costs import recorded_launches
from loraplex.runtime.layers.codebook import CodebookWeight
from loraplex.runtime.layers.quantized import Int4Weight

PROJECTIONS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
               "down": (4096, 14336)}  # (d_out, d_in)
GROUP_SIZE = 128
REPEATS = 50  # timed launches per product
RESULTS = Path(__file__).parent / "results" / "int4_gemm_cuda.json"


def tinygemm(weight: Int4Weight):
    """torch's CUDA int4 kernel on the same codes and tables, or None where unavailable."""
    try:
        codes = weight.codes().contiguous()  # [N, K] int32
        packed = torch.ops.aten._convert_weight_to_int4pack(
            (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8), 8)
        table = weight.scales_and_zeros
        probe = torch.zeros(1, weight.in_features, device="cuda", dtype=torch.bfloat16)
        torch.ops.aten._weight_int4pack_mm(probe, packed, GROUP_SIZE, table)
    except (RuntimeError, NotImplementedError) as unavailable:
        print(f"tinygemm unavailable: {str(unavailable).splitlines()[0][:100]}")
        return None
    return lambda x: torch.ops.aten._weight_int4pack_mm(x, packed, GROUP_SIZE, table)


def measure(name: str, rows_list: list[int]) -> list[dict]:
    d_out, d_in = PROJECTIONS[name]
    full = (torch.randn(d_out, d_in, device="cuda") * d_in**-0.5).to(torch.bfloat16)
    weight = Int4Weight.quantize(full, GROUP_SIZE)
    nf4 = CodebookWeight.quantize_nf4(full)
    tiny = tinygemm(weight)
    results = []
    for rows in rows_list:
        x = torch.randn(rows, d_in, device="cuda", dtype=torch.bfloat16)
        with recorded_launches() as costs:
            weight.linear(x)
        moved = sum(cost.read + cost.written for cost in costs)
        times = {
            "bf16": cuda_seconds(lambda x=x: F.linear(x, full), REPEATS),
            "int4": cuda_seconds(lambda x=x: weight.linear(x), REPEATS),
            "nf4": cuda_seconds(lambda x=x: nf4.linear(x), REPEATS),
            "dequantize": cuda_seconds(lambda x=x: F.linear(x, weight.dequantize().to(x.dtype)),
                                       repeats=10),
        }
        if tiny is not None:
            times["tinygemm"] = cuda_seconds(lambda x=x: tiny(x), REPEATS)
        results.append({"projection": name, "rows": rows, "d_out": d_out, "d_in": d_in,
                        "us": {kind: 1e6 * value for kind, value in times.items()},
                        "int4_gb_per_s": moved / times["int4"] / 1e9,
                        "int4_vs_bf16": times["int4"] / times["bf16"]})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 1, 64 and 2048 only")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.int4_gemm needs CUDA (the CPU's int4 path: bench.quantized)")
    rows_list = [1, 64, 2048] if args.quick else [1, 16, 64, 512, 2048]
    print(f"device {torch.cuda.get_device_name()}, groups of {GROUP_SIZE}, bf16 activations")
    print(f"{'proj':<9}{'rows':>6}{'bf16 us':>10}{'int4 us':>10}{'int4/bf16':>11}"
          f"{'int4 GB/s':>11}{'nf4 us':>9}{'dequant us':>12}{'tinygemm us':>13}")
    results = []
    for name in PROJECTIONS:
        for row in measure(name, rows_list):
            us = row["us"]
            tiny = f"{us['tinygemm']:>13.1f}" if "tinygemm" in us else f"{'-':>13}"
            print(f"{name:<9}{row['rows']:>6}{us['bf16']:>10.1f}{us['int4']:>10.1f}"
                  f"{row['int4_vs_bf16']:>11.2f}{row['int4_gb_per_s']:>11.0f}"
                  f"{us['nf4']:>9.1f}{us['dequantize']:>12.1f}{tiny}")
            results.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"device": torch.cuda.get_device_name(),
                                   "results": results}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
