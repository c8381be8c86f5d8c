"""What LoRA costs per layer, next to the layer's own matmuls.

On CPU: the compiled kernel (`cpu` backend, rank-major B) and torch's ops at SmolLM2-135M
shapes (hidden 576, ffn 1536, 9 q / 3 kv heads of 64), batch 64, with 1, 8, 32 and 64
distinct adapters of mixed ranks (8..64), rows sorted by adapter and shuffled (decode
order), against the four base projections of one layer (oneDNN with pre-packed weights, as
the engine runs them). Layers rotate over several copies so that weights come from memory,
as in a real forward. The pools hold zeros past each slot's rank, as the engine's slot pool
does, so the torch path reads runs of slots in place (`zero_padded`); mixed ranks are timed
both interleaved slot by slot ("8-64 mixed") and grouped by rank as the slot table places
them ("8-64 grouped"). Both storage orders of B are timed: the standard [S, d_out, R] and the
rank-major view of [S, R, d_out] (a slot's `[:rank]` is then one contiguous block).

On CUDA: the Triton shrink+expand at Llama-3-8B shapes in bf16, batch 1..256 with 1..256
distinct adapters at rank 16 and 64 (pools of R = 64, so rank masking shows), against the
torch path on the same GPU, with the bandwidth achieved over the bytes that must move
(x, the distinct adapters' A and B at their own rank, y read and written).

    python -m bench.kernels            # cuda if available, else cpu
    python -m bench.kernels --quick    # fewer points

Prints a table and writes `bench/results/kernels_<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from loraplex.runtime.kernels import LoraSegments, lora_apply, resolve_backend
from loraplex.runtime.layers.linear import Linear

RESULTS_DIR = Path(__file__).parent / "results"
SMOLLM2_135M = {  # group: (d_in, slice widths)
    "qkv": (576, [576, 192, 192]),
    "o": (576, [576]),
    "gate_up": (576, [1536, 1536]),
    "down": (1536, [576]),
}
LLAMA3_8B = {
    "qkv": (4096, [4096, 1024, 1024]),
    "o": (4096, [4096]),
    "gate_up": (4096, [14336, 14336]),
    "down": (14336, [4096]),
}
MIXED_RANKS = (8, 16, 32, 64)
MAX_RANK = 64
STANDARD, RANK_MAJOR = "d_out,R", "R,d_out"  # storage orders of lora_b


@dataclass
class Layer:
    """One decoder layer's projections: base weight and LoRA pools per group."""

    weights: dict[str, torch.Tensor]  # group: [d_out_total, d_in]
    lora_a: dict[str, torch.Tensor]  # group: [S, n_slices, R, d_in]
    lora_b: dict[str, torch.Tensor]  # group: [S, d_out_total, R], contiguous
    lora_b_rank_major: dict[str, torch.Tensor]  # same values, a view of [S, R, d_out_total]
    slice_offsets: dict[str, list[int]]

    def pool_b(self, group: str, b_layout: str) -> torch.Tensor:
        return self.lora_b_rank_major[group] if b_layout == RANK_MAJOR else self.lora_b[group]


@dataclass
class Row:
    device: str
    batch: int
    adapters: int
    layout: str
    rank: str
    b_layout: str  # storage of lora_b: "d_out,R" (contiguous) or "R,d_out" (rank-major)
    base_ms: float  # the layer's 4 base matmuls
    lora_ms: float  # the 4 lora_apply calls (CPU: the compiled kernel; CUDA: triton)
    overhead: float  # lora_ms / base_ms
    torch_loop_ms: float | None  # the torch ops (CUDA: on the GPU, standard B layout only)
    lora_mb: float  # bytes LoRA must move per layer
    lora_gbps: float


def make_layer(
    shapes: dict, num_slots: int, dtype: torch.dtype, device: str, with_base: bool
) -> Layer:
    layer = Layer({}, {}, {}, {}, {})
    for group, (d_in, widths) in shapes.items():
        d_out = sum(widths)
        scale = d_in**-0.5
        if with_base:
            layer.weights[group] = torch.randn(d_out, d_in, dtype=dtype, device=device) * scale
        layer.lora_a[group] = (
            torch.randn(num_slots, len(widths), MAX_RANK, d_in, dtype=dtype, device=device) * scale
        )
        layer.lora_b[group] = torch.randn(num_slots, d_out, MAX_RANK, dtype=dtype, device=device)
        rank_major = layer.lora_b[group].transpose(1, 2).contiguous()  # [S, R, d_out]
        layer.lora_b_rank_major[group] = rank_major.transpose(1, 2)
        layer.slice_offsets[group] = [0, *torch.tensor(widths).cumsum(0).tolist()]
    return layer


def packed_linear(weight: torch.Tensor) -> Linear:
    """The engine's CPU linear (oneDNN, weight packed once) around `weight` [d_out, d_in]."""
    linear = Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data = weight
    linear.pack()
    return linear


def zero_past_ranks(layer: Layer, ranks: list[int]) -> None:
    """Zeros past each slot's rank, as the engine's slot pool keeps them."""
    for group in layer.lora_a:
        for slot, rank in enumerate(ranks):
            layer.lora_a[group][slot, :, rank:] = 0.0
            layer.lora_b[group][slot, :, rank:] = 0.0
            layer.lora_b_rank_major[group][slot, :, rank:] = 0.0


def token_slots(batch: int, adapters: int, layout: str, seed: int = 0) -> list[int]:
    slots = [row % adapters for row in range(batch)]
    if layout == "shuffled":
        random.Random(seed).shuffle(slots)
    else:
        slots.sort()
    return slots


def lora_bytes(shapes: dict, ranks: list[int], batch: int, element_size: int) -> int:
    """x read, each distinct adapter's A and B at its own rank, y read and written."""
    total = 0
    for d_in, widths in shapes.values():
        d_out = sum(widths)
        total += batch * (d_in + 2 * d_out) * element_size
        total += sum(rank * (len(widths) * d_in + d_out) for rank in ranks) * element_size
    return total


def time_cpu(function: Callable[[], None], repeats: int) -> float:
    """Fastest of `repeats` calls after one warm-up: on a shared machine the minimum is
    the least noisy estimate of what the code itself costs. With one torch thread the
    process's CPU time is used, which other processes on the machine disturb less."""
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    function()
    samples = []
    for _ in range(repeats):
        start = clock()
        function()
        samples.append(clock() - start)
    return min(samples)


def bench_cpu(quick: bool) -> Iterator[Row]:
    """Mixed ranks 8..64 at every adapter count; uniform ranks 8 and 16 at 32 adapters
    show how the cost splits between per-slot overhead and bytes."""
    num_layers, batch = 4, 64  # 4 layers x ~170 MB of pools: more than any CPU cache
    adapter_counts = (1, 32) if quick else (1, 8, 32, 64)
    num_slots = max(adapter_counts)
    layers = [make_layer(SMOLLM2_135M, num_slots, torch.float32, "cpu", True) for _ in range(4)]
    generator = random.Random(0)
    mixed = [generator.choice(MIXED_RANKS) for _ in range(num_slots)]
    inputs = {group: torch.randn(batch, d_in) for group, (d_in, _) in SMOLLM2_135M.items()}
    outputs = {group: torch.zeros(batch, sum(w)) for group, (_, w) in SMOLLM2_135M.items()}

    packed = [{group: packed_linear(weight) for group, weight in layer.weights.items()}
              for layer in layers]

    def base() -> None:
        for weights in packed:
            for group, weight in weights.items():
                weight(inputs[group])

    repeats = 5 if quick else 15
    base_s = time_cpu(base, repeats) / num_layers
    cases = [(adapters, "8-64 mixed", mixed) for adapters in adapter_counts]
    cases += [(adapters, "8-64 grouped", sorted(mixed[:adapters]) + mixed[adapters:])
              for adapters in adapter_counts if adapters > 1]
    cases += [(32, "16", [16] * num_slots), (32, "8", [8] * num_slots)]
    for adapters, rank_label, ranks in cases:
        rank_tensor = torch.tensor(ranks, dtype=torch.int32)
        for layer in layers:
            zero_past_ranks(layer, ranks)
        for layout in ("sorted", "shuffled"):
            segments = LoraSegments.from_token_slots(token_slots(batch, adapters, layout))
            for b_layout in (STANDARD, RANK_MAJOR):

                def lora(backend: str, segments=segments, rank_tensor=rank_tensor,
                         b_layout=b_layout) -> None:
                    for layer in layers:
                        for group in SMOLLM2_135M:
                            lora_apply(
                                outputs[group], inputs[group], layer.lora_a[group],
                                layer.pool_b(group, b_layout), layer.slice_offsets[group],
                                segments, rank_tensor, backend=backend, zero_padded=True,
                            )  # fmt: skip

                # the compiled kernel takes a rank-major pool only (else it runs torch's ops)
                backend = resolve_backend("auto", torch.device("cpu"))
                torch_s = time_cpu(lambda: lora("torch"), repeats) / num_layers
                lora_s = torch_s
                if b_layout == RANK_MAJOR and backend == "cpu":
                    lora_s = time_cpu(lambda: lora("cpu"), repeats) / num_layers
                moved = lora_bytes(SMOLLM2_135M, ranks[:adapters], batch, element_size=4)
                yield Row("cpu", batch, adapters, layout, rank_label, b_layout, base_s * 1e3,
                          lora_s * 1e3, lora_s / base_s, torch_s * 1e3, moved / 1e6,
                          moved / lora_s / 1e9)  # fmt: skip


def bench_cuda(quick: bool) -> Iterator[Row]:
    points = [(1, 1), (16, 16), (64, 8), (64, 64), (256, 32), (256, 256)]
    if not quick:
        points = [(1, 1), (16, 1), (16, 16), (64, 1), (64, 8), (64, 64), (256, 1), (256, 32),
                  (256, 256)]  # fmt: skip
    num_slots = max(adapters for _, adapters in points)
    layer = make_layer(LLAMA3_8B, num_slots, torch.bfloat16, "cuda", with_base=True)
    for batch, adapters in points:
        for rank in (16, 64):
            yield from cuda_point(layer, batch, adapters, rank, num_slots, quick)


def cuda_point(
    layer: Layer, batch: int, adapters: int, rank: int, num_slots: int, quick: bool
) -> Iterator[Row]:
    """Triton with both storage orders of B; the torch loop with the standard one."""
    from triton.testing import do_bench  # flushes L2 between runs

    ranks = torch.full((num_slots,), rank, dtype=torch.int32, device="cuda")
    inputs = {g: torch.randn(batch, d, dtype=torch.bfloat16, device="cuda")
              for g, (d, _) in LLAMA3_8B.items()}  # fmt: skip
    outputs = {g: torch.zeros(batch, sum(w), dtype=torch.bfloat16, device="cuda")
               for g, (_, w) in LLAMA3_8B.items()}  # fmt: skip
    segments = LoraSegments.from_token_slots(token_slots(batch, adapters, "sorted"), "cuda")

    def base() -> None:
        for group, weight in layer.weights.items():
            F.linear(inputs[group], weight)

    def lora(backend: str, b_layout: str) -> None:
        for group in LLAMA3_8B:
            lora_apply(
                outputs[group], inputs[group], layer.lora_a[group],
                layer.pool_b(group, b_layout), layer.slice_offsets[group], segments, ranks,
                backend=backend,
            )  # fmt: skip

    base_ms = do_bench(base, warmup=10, rep=50)
    torch_ms = do_bench(lambda: lora("torch", STANDARD), warmup=5, rep=50 if quick else 100)
    moved = lora_bytes(LLAMA3_8B, [rank] * adapters, batch, element_size=2)
    for b_layout in (STANDARD, RANK_MAJOR):
        triton_ms = do_bench(lambda b_layout=b_layout: lora("triton", b_layout), warmup=25, rep=100)
        gbps = moved / (triton_ms * 1e-3) / 1e9
        loop_ms = torch_ms if b_layout == STANDARD else None
        yield Row("cuda", batch, adapters, "sorted", str(rank), b_layout, base_ms, triton_ms,
                  triton_ms / base_ms, loop_ms, moved / 1e6, gbps)  # fmt: skip


HEADER = (
    f"{'device':<12} {'batch':>5} {'adapters':>8} {'layout':>8} {'rank':>5} {'B':>8} "
    f"{'base ms':>9} {'lora ms':>9} {'lora/base':>9} {'loop ms':>9} {'MB moved':>9} {'GB/s':>7}"
)


def print_row(row: Row) -> None:
    print(
        f"{row.device:<12} {row.batch:>5} {row.adapters:>8} {row.layout:>8} {row.rank:>5} "
        f"{row.b_layout:>8} "
        f"{row.base_ms:>9.3f} {row.lora_ms:>9.3f} {row.overhead:>9.1%} "
        f"{row.torch_loop_ms if row.torch_loop_ms is not None else float('nan'):>9.3f} "
        f"{row.lora_mb:>9.1f} {row.lora_gbps:>7.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="fewer points, fewer repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda":
        print("per layer of Llama-3-8B, bf16: base = 4 projections, lora = triton "
              "shrink+expand, loop = torch path on the GPU")  # fmt: skip
    else:
        print(f"per layer of SmolLM2-135M, fp32, {torch.get_num_threads()} threads: "
              "base = the 4 projections, lora = the compiled kernel where it takes the pool "
              "(else torch's ops), loop = torch's ops")  # fmt: skip
    print(HEADER)
    label = "cpu"
    if device == "cuda":
        label = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"kernels_{label}.json"
    report = {
        "machine": label if device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "clock": "process cpu time" if torch.get_num_threads() == 1 else "wall",
        "torch": torch.__version__,
        "rows": [],
    }
    rows = bench_cuda(args.quick) if device == "cuda" else bench_cpu(args.quick)
    for row in rows:
        print_row(row)
        report["rows"].append(asdict(row))
        path.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a timeout
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
