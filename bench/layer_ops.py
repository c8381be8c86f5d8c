"""A decoder layer's small ops on a CPU: the compiled calls against torch's forms.

Around its projections a layer normalises its input, rotates query and key, adds the
attention output to the residual, normalises again and adds the MLP output. Timed per layer
at SmolLM2-135M shapes (hidden 576, 9 query and 3 KV heads of 64) on rows of a fused q|k|v
output, batch 1, 16 and 64, fp32 and bf16, as the engine runs them (`kernels.cpu_layer_ops`:
one call per norm and one for both rotaries) and as torch's ops (`RMSNorm.torch_form`,
`apply_rotary` per tensor), alternating, the median of several runs.

    python -m bench.layer_ops [--threads N]

Prints a table and writes `bench/results/layer_ops_cpu.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.report import machine_info, write_json
from loraplex.runtime.layers.rms_norm import RMSNorm
from loraplex.runtime.layers.rotary import apply_rotary, apply_rotary_qk

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 576, 9, 3, 64
RESULTS = Path(__file__).resolve().parent / "results" / "layer_ops_cpu.json"
CALLS, RUNS = 2000, 7


def layer_inputs(rows: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    table = torch.rand(rows, HEAD_DIM // 2, generator=generator).repeat(1, 2) * 1000
    q_size, kv_size = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    return {name: tensor.to(dtype) for name, tensor in {
        "hidden": torch.randn(rows, HIDDEN, generator=generator),
        "attended": torch.randn(rows, HIDDEN, generator=generator),
        "mlp": torch.randn(rows, HIDDEN, generator=generator),
        "qkv": torch.randn(rows, q_size + 2 * kv_size, generator=generator),
        "cos": table.cos()[:, None, :], "sin": table.sin()[:, None, :]}.items()}


def query_and_key(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The query [T, H, D] and key [T, Hkv, D] views of the q|k|v rows."""
    q_size, kv_size = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    rows = t["qkv"].shape[0]
    return (t["qkv"][:, :q_size].view(rows, HEADS, HEAD_DIM),
            t["qkv"][:, q_size:q_size + kv_size].view(rows, KV_HEADS, HEAD_DIM))


def engine_ops(norms: tuple[RMSNorm, RMSNorm], t: dict[str, torch.Tensor]) -> torch.Tensor:
    norms[0](t["hidden"])
    apply_rotary_qk(*query_and_key(t), t["cos"], t["sin"])
    _, summed = norms[1].add_and_norm(t["attended"], t["hidden"])
    return summed + t["mlp"]


def torch_ops(norms: tuple[RMSNorm, RMSNorm], t: dict[str, torch.Tensor]) -> torch.Tensor:
    norms[0].torch_form(t["hidden"])
    for heads in query_and_key(t):
        apply_rotary(heads, t["cos"], t["sin"])
    summed = t["hidden"] + t["attended"]
    norms[1].torch_form(summed)
    return summed + t["mlp"]


def microseconds(function: Callable[..., object], *args: object) -> float:
    for _ in range(CALLS // 10):
        function(*args)
    started = time.perf_counter()
    for _ in range(CALLS):
        function(*args)
    return (time.perf_counter() - started) / CALLS * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows_out = []
    print("| dtype | batch | torch's ops us | compiled us | compiled / torch |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            norms = (RMSNorm(HIDDEN, 1e-5).to(dtype), RMSNorm(HIDDEN, 1e-5).to(dtype))
            for batch in (1, 16, 64):
                inputs = layer_inputs(batch, dtype)
                runs: dict[str, list[float]] = {"torch": [], "compiled": []}
                for _ in range(RUNS):
                    runs["torch"].append(microseconds(torch_ops, norms, inputs))
                    runs["compiled"].append(microseconds(engine_ops, norms, inputs))
                row = {"dtype": str(dtype).removeprefix("torch."), "batch": batch,
                       **{f"{name}_us": statistics.median(v) for name, v in runs.items()}}
                rows_out.append(row)
                print(f"| {row['dtype']} | {batch} | {row['torch_us']:.1f} | "
                      f"{row['compiled_us']:.1f} | {row['compiled_us'] / row['torch_us']:.2f} |")
    write_json(args.out, {"threads": torch.get_num_threads(), "machine": machine_info("cpu"),
                         "rows": rows_out})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
