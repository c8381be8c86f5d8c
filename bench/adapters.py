"""Throughput with many distinct LoRA adapters in one batch, against base-only and PEFT.

One batch of `--batch` (64) greedy requests, `--new-tokens` (32) tokens each (EOS
ignored), spread round-robin over 1, 8, 32 and 64 distinct adapters, for two rank mixes:
8-64 (8, 16, 32, 64 in turn) and 8-16 (the common fine-tune ranks). Compared with our own
base-only throughput on the same prompts (measured beside every row, as the machine may
be shared) and with PEFT's mixed-adapter batch
(`generate(..., adapter_names=[...])`, left-padded) on transformers' model from the same
folder. All adapters target all seven projections. Every adapter is registered under its
own name and gets its own device slot (the adapters of one rank share a random weight
file: the work per slot is the same as for different weights, and writing and parsing
64 large adapters would dominate the run). Timed runs start once every adapter is on
the device (a short warm-up run loads them). Prints a table, writes JSON and a PNG plot.

    python -m bench.adapters                       # builtin SmolLM2-135M, fp32, CPU
    python -m bench.adapters --model llama-3-8b --load-format dummy --quick   # a GPU pod
"""

from __future__ import annotations

import argparse
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

RANK_MIXES = {"8-64": (8, 16, 32, 64), "8-16": (8, 16)}


def run_engine(engine: Engine, prompts: list[list[int]], adapters: list[str | None],
               new_tokens: int) -> float:
    """Seconds to generate `new_tokens` for every prompt, request i on adapters[i]."""
    stamp = time.monotonic_ns()
    requests = [GenerationRequest(f"bench-{stamp}-{i}", prompt,
                                  SamplingParams(max_new_tokens=new_tokens, ignore_eos=True),
                                  adapter=adapter)
                for i, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True))]
    started = time.perf_counter()
    results = engine.generate(requests)
    elapsed = time.perf_counter() - started
    failed = [e.error for r in requests for e in results[r.request_id] if e.error]
    if failed:
        raise RuntimeError(f"bench requests failed: {failed[:3]}")
    return elapsed


def run_peft(model, prompts: list[list[int]], adapters: list[str], new_tokens: int,
             pad_id: int) -> float:
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                       max_new_tokens=new_tokens, eos_token_id=None,
                       pad_token_id=pad_id, adapter_names=adapters)
    return time.perf_counter() - started


def write_rank_folders(root: Path, target: LoraTargetShapes, ranks: tuple[int, ...]
                       ) -> dict[int, Path]:
    return {rank: write_random_adapter(root / f"rank{rank}", target, rank, seed=rank)
            for rank in ranks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--load-format", default="auto", choices=("auto", "dummy"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--counts", default="1,8,32,64", help="distinct adapters per batch")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--mixes", default="8-64,8-16", help=f"of {list(RANK_MIXES)}")
    parser.add_argument("--no-peft", action="store_true", help="skip the PEFT comparison")
    parser.add_argument("--quick", action="store_true",
                        help="counts 1,8,32, 16 new tokens, rank mix 8-16, no PEFT")
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts, args.new_tokens, args.mixes, args.no_peft = "1,8,32", 16, "8-16", True
    counts = [int(c) for c in args.counts.split(",")]
    mixes = args.mixes.split(",")
    max_rank = max(max(RANK_MIXES[mix]) for mix in mixes)

    config = EngineConfig(model=args.model, load_format=args.load_format, device=args.device,
                          dtype=args.dtype, max_num_seqs=args.batch,
                          device_slots=max(counts), max_lora_rank=max_rank,
                          kv_cache_bytes=1 << 30 if args.device in ("auto", "cpu") else 0)
    loaded = load_model(config)
    device_name = loaded.device.type
    engine = Engine(config, loaded)
    target = LoraTargetShapes.from_hf_config(loaded.hf_config)
    prompts = chat_prompts(loaded.tokenizer, args.batch)
    peft_model = None
    if not args.no_peft and args.load_format != "dummy":
        from transformers import AutoModelForCausalLM

        peft_model = AutoModelForCausalLM.from_pretrained(loaded.folder,
                                                          dtype=torch.float32).eval()
    pad_id = loaded.tokenizer.pad_token_id or loaded.eos_token_ids[0]

    generated = args.batch * args.new_tokens
    run_engine(engine, prompts, [None] * args.batch, args.new_tokens)  # warm-up

    def base_tokens_per_s() -> float:  # measured beside every row: the machine is shared
        return generated / run_engine(engine, prompts, [None] * args.batch, args.new_tokens)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for mix in mixes:
            ranks = RANK_MIXES[mix]
            folders = write_rank_folders(Path(scratch) / mix, target, ranks)
            for count in counts:
                names = [f"{mix}-{i}" for i in range(count)]
                for i, name in enumerate(names):
                    engine.adapters.register(name, str(folders[ranks[i % len(ranks)]]))
                adapters = [names[i % count] for i in range(args.batch)]
                run_engine(engine, prompts, adapters, 2)  # warm-up: loads every adapter
                base_tps = base_tokens_per_s()
                ours_s = run_engine(engine, prompts, adapters, args.new_tokens)
                row = {"rank_mix": mix, "distinct_adapters": count, "batch": args.batch,
                       "new_tokens": args.new_tokens, "tokens_per_s": generated / ours_s,
                       "base_tokens_per_s": base_tps}
                row["vs_base"] = row["tokens_per_s"] / base_tps
                if peft_model is not None:
                    peft_s = time_peft(peft_model, folders, ranks, names, prompts, adapters,
                                       args.new_tokens, pad_id)
                    row["peft_tokens_per_s"] = generated / peft_s
                    row["vs_peft"] = row["tokens_per_s"] / row["peft_tokens_per_s"]
                rows.append(row)
                print(f"mix {mix:>5} adapters {count:>3}: {row['tokens_per_s']:8.1f} tok/s "
                      f"({row['vs_base']:.2f}x base"
                      + (f", {row['vs_peft']:.2f}x PEFT)" if "vs_peft" in row else ")"),
                      flush=True)
                for name in names:
                    engine.adapters.unregister(name)
    engine.close()
    print_table(rows)
    result = {
        "model": args.model, "load_format": args.load_format, "device": device_name,
        "dtype": str(loaded.dtype).removeprefix("torch."), "greedy": True,
        "machine": machine_info(device_name),
        "rows": rows,
    }
    out = Path(args.out_dir)
    write_json(out / f"adapters_{device_name}.json", result)
    plot(rows, out / f"adapters_{device_name}.png", args.model)
    print(f"\nwrote {out / f'adapters_{device_name}.json'} and .png")
    return 0


def time_peft(model, folders: dict[int, Path], ranks: tuple[int, ...], names: list[str],
              prompts: list[list[int]], adapters: list[str], new_tokens: int,
              pad_id: int) -> float:
    """PEFT's mixed batch with the same adapters (loaded onto `model`, removed after)."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, folders[ranks[0]], adapter_name=names[0])
    try:
        for i, name in enumerate(names[1:], start=1):
            peft.load_adapter(folders[ranks[i % len(ranks)]], adapter_name=name)
        run_peft(peft, prompts, adapters, 2, pad_id)  # warm-up
        return run_peft(peft, prompts, adapters, new_tokens, pad_id)
    finally:
        peft.unload()


def print_table(rows: list[dict]) -> None:
    print(f"\n{'mix':>5} {'adapters':>8} {'tok/s':>8} {'x base':>7} {'PEFT tok/s':>11} "
          f"{'x PEFT':>7}")
    for row in rows:
        peft = row.get("peft_tokens_per_s")
        print(f"{row['rank_mix']:>5} {row['distinct_adapters']:>8} {row['tokens_per_s']:>8.1f} "
              f"{row['vs_base']:>7.2f} {peft if peft is None else f'{peft:.1f}':>11} "
              f"{row.get('vs_peft', float('nan')):>7.2f}")


def plot(rows: list[dict], path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for mix in dict.fromkeys(row["rank_mix"] for row in rows):
        mine = [row for row in rows if row["rank_mix"] == mix]
        counts = [row["distinct_adapters"] for row in mine]
        axes.plot(counts, [row["tokens_per_s"] for row in mine], "o-",
                  label=f"loraplex, ranks {mix}")
        if all("peft_tokens_per_s" in row for row in mine):
            axes.plot(counts, [row["peft_tokens_per_s"] for row in mine], "s--",
                      label=f"PEFT mixed batch, ranks {mix}")
    base = [row["base_tokens_per_s"] for row in rows]
    axes.axhline(sorted(base)[len(base) // 2], color="gray", linestyle=":",
                 label="loraplex, base model only (median)")
    axes.set_xscale("log", base=2)
    axes.set_xlabel(f"distinct adapters in one batch of {rows[0]['batch']} requests")
    axes.set_ylabel("generated tokens / s")
    axes.set_title(f"{model}: multi-LoRA throughput")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    raise SystemExit(main())
