"""Multi-LoRA throughput where users are: batch x adapter count, in process, over HTTP, PEFT.

A matrix of cells: a batch of B greedy requests (B in `--batches`, 1/4/16/64), `--new-tokens`
(32) tokens each with EOS ignored, spread round-robin over N distinct adapters (N in
`--counts`, 0 = base model only, 1/4/8/32) whose ranks cycle through `--ranks` (8, 16, 32,
64), all seven projections targeted. Each cell is timed, one after the other so that a
busy shared machine slows all alike:
- `inproc`: our engine in this process (`Engine.generate`);
- `http`: the same prompts as text through a real `loraplex serve` (`bench.serve_batch`),
  all B `/generate` requests sent at once;
- `peft`: transformers + PEFT's mixed batch (`bench.adapters_peft`) on the same weights,
  the same prompt ids and the same adapter folders.
A cell with adapters also times each side's base model on the same batch right after its
mixed run (`inproc_base`, ...), as the load of a shared machine changes by the minute;
`--repeats N` times each pair N times, alternating, and keeps the medians (one run of a
batch-16 cell swings by 10-20% here).
Adapters are on the device before timing (registered, preloaded, warmed up), prefix
caching is off on our side (the same prompts repeat from cell to cell). A cell with more
adapters than rows uses the first B of them (its `distinct`). The adapters of one rank
share one random weight file, but each is registered under its own name and gets its own
slot (and its own copy in PEFT), so the work is that of distinct adapters. Prompts are
the chat-templated questions of `bench.engine` (their token lengths are printed and
saved). Prints a table, writes JSON.

    python -m bench.adapters                                   # the whole matrix (long)
    python -m bench.adapters --batches 1,4,16,64 --counts 0,8  # the batch row at 8 adapters
    python -m bench.adapters --check-peft                      # PEFT harness vs a plain loop
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.adapters_peft import PeftBatch, plain_generate_seconds
from bench.engine import QUESTIONS
from bench.report import machine_info, write_json
from bench.serve_batch import ServedBatch
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import LORA_BACKENDS, EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.kernels import resolve_backend
from loraplex.runtime.models.loader import load_model

MODES = ("inproc", "http", "peft")
KV_CACHE_BYTES = 1 << 30


def chat_texts(tokenizer, count: int) -> list[str]:
    """`count` chat-templated prompts (a question each, repeated ones made distinct)."""
    texts = []
    for index in range(count):
        question = QUESTIONS[index % len(QUESTIONS)]
        if index >= len(QUESTIONS):
            question = f"{question} (variant {index // len(QUESTIONS)})"
        texts.append(tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True,
            tokenize=False))
    return texts


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(item) for item in text.split(",")]  # noqa: E731
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--load-format", default="auto", choices=("auto", "dummy"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32",
                        help="of loraplex and of PEFT's base model alike")
    parser.add_argument("--quantize", default="none", help="none, int8, int4, nf4 or gguf")
    parser.add_argument("--lora-backend", default="auto", choices=LORA_BACKENDS,
                        help="loraplex's LoRA path, in process and in the server")
    parser.add_argument("--quick", action="store_true",
                        help="in process only, batch 64, counts 0,1,8,32, 16 new tokens")
    parser.add_argument("--batches", type=ints, default=[1, 4, 16, 64])
    parser.add_argument("--counts", type=ints, default=[0, 1, 4, 8, 32],
                        help="distinct adapters per batch (0: base model only)")
    parser.add_argument("--ranks", type=ints, default=[8, 16, 32, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1,
                        help="timings of each cell (mixed and base alternating); medians kept")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {MODES}")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads on every side (0: each side's default: torch's "
                        "in process and for PEFT, every core in the server)")
    parser.add_argument("--check-peft", action="store_true",
                        help="only time the PEFT harness against a plain PEFT loop")
    parser.add_argument("--out", default="bench/results/adapters_matrix_cpu.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.modes, args.batches, args.counts, args.new_tokens = "inproc", [64], [0, 1, 8, 32], 16
    args.modes = args.modes.split(",")
    if args.load_format == "dummy" and args.modes != ["inproc"]:
        parser.error("a dummy model has no weights folder for PEFT: use --modes inproc")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if set(args.modes) - set(MODES):
        parser.error(f"--modes must be of {MODES}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EngineConfig(model=args.model, load_format=args.load_format, dtype=args.dtype,
                          quantize=args.quantize, device=args.device,
                          lora_backend=args.lora_backend,
                          max_num_seqs=max(args.batches), device_slots=max(max(args.counts), 1),
                          max_lora_rank=max(args.ranks),
                          kv_cache_bytes=KV_CACHE_BYTES if args.device in ("auto", "cpu") else 0,
                          prefix_caching=False)
    loaded = load_model(config)
    tokenizer = loaded.tokenizer
    texts = chat_texts(tokenizer, max(args.batches))
    prompts = [list(tokenizer.encode(text)) for text in texts]  # as the server encodes
    pad_id = tokenizer.pad_token_id or loaded.eos_token_ids[0]
    target = LoraTargetShapes.from_hf_config(loaded.hf_config)
    with tempfile.TemporaryDirectory() as scratch:
        files = {rank: write_random_adapter(Path(scratch) / f"rank{rank}", target, rank,
                                            seed=rank) for rank in args.ranks}
        names = [f"r{args.ranks[i % len(args.ranks)]}-{i}" for i in range(max(args.counts))]
        folders = {name: files[args.ranks[i % len(args.ranks)]]
                   for i, name in enumerate(names)}
        if args.check_peft:
            return check_peft(args, loaded, tokenizer, texts, prompts, folders, pad_id)
        rows = run_matrix(args, config, loaded, texts, prompts, names, folders, pad_id)
    print_table(rows)
    lengths = [len(p) for p in prompts]
    print(f"prompt lengths (tokens, batch order): {lengths}")
    write_json(Path(args.out), {
        "model": args.model, "dtype": str(loaded.dtype).removeprefix("torch."),
        "quantize": args.quantize, "device": loaded.device.type, "greedy": True,
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "lora_backend": resolve_backend(args.lora_backend, loaded.device),
        "ranks": args.ranks, "prompt_lengths": lengths,
        "machine": machine_info(loaded.device.type), "rows": rows})
    print(f"wrote {args.out}")
    return 0


def run_matrix(args, config: EngineConfig, loaded, texts, prompts, names, folders,
               pad_id: int) -> list[dict]:
    engine = Engine(config, loaded) if "inproc" in args.modes else None
    served = ServedBatch(
        "--model", args.model, "--dtype", args.dtype, "--quantize", args.quantize,
        "--device", args.device, "--max-num-seqs", str(max(args.batches)), "--device-slots",
        str(config.device_slots), "--max-lora-rank", str(max(args.ranks)),
        "--kv-cache-bytes", str(KV_CACHE_BYTES), "--no-prefix-caching",
        "--lora-backend", args.lora_backend,
        *(("--cpu-threads", str(args.threads)) if args.threads else ()),
        env={"OMP_NUM_THREADS": str(args.threads)} if args.threads else None,
    ) if "http" in args.modes else None
    peft = PeftBatch(loaded.folder, pad_id, loaded.dtype) if "peft" in args.modes else None
    rows = []
    try:
        for count in args.counts:
            used = names[:count]
            if engine is not None:
                for name in used:
                    engine.adapters.register(name, str(folders[name]))
            if served is not None:
                served.register({name: folders[name] for name in used})
            if peft is not None and used:
                peft.add_adapters({name: folders[name] for name in used})
            for batch in args.batches:
                adapters = [used[i % count] if count else None for i in range(batch)]
                row = {"batch": batch, "adapters": count, "distinct": min(count, batch)}
                timers = {"inproc": engine and (
                    lambda p, a, n: run_engine(engine, p, a, n)),
                          "http": served and (
                    lambda p, a, n: served.time_batch(texts[:len(p)], a, n)),
                          "peft": peft and peft.time_batch}
                for mode, timer in timers.items():
                    if timer:
                        timer(prompts[:batch], adapters, 2)  # warm-up: every adapter loaded
                        if mode == "http":
                            served.check_on_device(sorted({a for a in adapters if a}))
                        row.update(time_cell(mode, timer, prompts[:batch], adapters,
                                             args.new_tokens, args.repeats))
                rows.append(row)
                print(row_line(row), flush=True)
    finally:
        if served is not None:
            served.close()
        if engine is not None:
            engine.close()
    return rows


def time_cell(mode: str, timer, prompts: list[list[int]], adapters: list[str | None],
              new_tokens: int, repeats: int) -> dict[str, float]:
    """tok/s of the batch, and of the same batch on the base model right after (the load
    of a shared machine changes from minute to minute: a ratio needs both together): the
    medians of `repeats` timings, the two alternating."""
    generated = len(prompts) * new_tokens
    runs: dict[str, list[float]] = {mode: [], f"{mode}_base": []}
    for _ in range(repeats):
        runs[mode].append(generated / timer(prompts, adapters, new_tokens))
        if any(adapters):
            runs[f"{mode}_base"].append(
                generated / timer(prompts, [None] * len(prompts), new_tokens))
    return {key: statistics.median(rates) for key, rates in runs.items() if rates}


def check_peft(args, loaded, tokenizer, texts, prompts, folders, pad_id: int) -> int:
    """Time the harness and a plain PEFT loop on the first batch/count given."""
    folder = loaded.folder
    batch, count = args.batches[0], max(args.counts)
    used = list(folders)[:count]
    adapters = [used[i % count] for i in range(batch)]
    harness = PeftBatch(folder, pad_id, loaded.dtype)
    harness.add_adapters({name: folders[name] for name in used})
    harness.time_batch(prompts[:batch], adapters, 2)
    harness_s = harness.time_batch(prompts[:batch], adapters, args.new_tokens)
    del harness
    plain_s = plain_generate_seconds(folder, tokenizer, texts[:batch],
                                     {name: folders[name] for name in used}, adapters,
                                     args.new_tokens, loaded.dtype)
    generated = batch * args.new_tokens
    print(f"batch {batch}, {count} adapters: harness {generated / harness_s:.1f} tok/s, "
          f"plain PeftModel.generate loop {generated / plain_s:.1f} tok/s")
    return 0


def row_line(row: dict) -> str:
    cells = " ".join(f"{mode} {row[mode]:7.1f}" for mode in MODES if mode in row)
    return (f"batch {row['batch']:>3} adapters {row['adapters']:>3} ({row['distinct']} in "
            f"the batch): {cells} tok/s")


def print_table(rows: list[dict]) -> None:
    """tok/s per cell, and each mode's ratio to its own base-only run beside it."""
    print(f"\n{'batch':>5} {'adapters':>8} " + " ".join(f"{m + ' tok/s':>12}" for m in MODES)
          + f" {'http/inproc':>11} {'inproc/base':>11} {'http/base':>9} {'peft/base':>9}"
          + f" {'http/peft':>9}")
    for row in rows:
        own = {mode: row.get(f"{mode}_base", row.get(mode)) for mode in MODES}
        ratio = lambda a, b: (f"{a / b:.2f}" if a and b else "-")  # noqa: E731
        print(f"{row['batch']:>5} {row['adapters']:>8} "
              + " ".join(f"{row.get(m, float('nan')):>12.1f}" for m in MODES)
              + f" {ratio(row.get('http'), row.get('inproc')):>11}"
              + f" {ratio(row.get('inproc'), own.get('inproc')):>11}"
              + f" {ratio(row.get('http'), own.get('http')):>9}"
              + f" {ratio(row.get('peft'), own.get('peft')):>9}"
              + f" {ratio(row.get('http'), row.get('peft')):>9}")


if __name__ == "__main__":
    raise SystemExit(main())
