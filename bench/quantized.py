"""Quantized bases on this machine: resident memory after start-up and tokens per second.

`python -m bench.quantized` loads the builtin model once per variant (fp32, bf16, int8,
int4 with bf16 activations, int4 in groups of 64, int8 and int4 with fp32 activations, NF4,
the GGUF's own Q4_1 blocks, and checkpoints that transformers saves from a bitsandbytes
load of the model in NF4 and 8-bit, made once in the cache), each in a fresh process so
that its resident set after start-up is its own (an engine alone, and a whole `loraplex
serve` once it answers /health), then times greedy generation at batch 1 and 32 on the base
and at batch 64 spread over 32 random adapters (ranks 8-64). The variants alternate in one
run; the ratios against fp32 in the table come from that run. Quality is measured beside
speed: the perplexity of the tests' fixed text (tests/data/perplexity.txt, from the
engine's own prompt logprobs) and how many of 8 chat prompts give the first variant's
greedy tokens (16 new tokens each). The floor under the server figures is printed first: a
process that has imported what `loraplex serve` imports before it loads a model.
"""

from __future__ import annotations

import argparse
import json
import math
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
    "int4-g64": {"dtype": "bfloat16", "quantize": "int4", "quantize_group_size": 64},
    "int8-fp32": {"dtype": "float32", "quantize": "int8"},
    "int4-fp32": {"dtype": "float32", "quantize": "int4"},
    "nf4": {"dtype": "bfloat16", "quantize": "nf4"},
    "gguf-q4_1": {"dtype": "bfloat16", "quantize": "gguf"},
    "bnb-nf4": {"dtype": "bfloat16", "checkpoint": "bnb-nf4"},
    "bnb-int8": {"dtype": "bfloat16", "checkpoint": "bnb-int8"},
}
CHECKPOINTS = {  # name -> BitsAndBytesConfig settings of a bitsandbytes checkpoint variant
    "bnb-nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    "bnb-int8": {"load_in_8bit": True},
}
RANKS = (8, 16, 32, 64)
PERPLEXITY_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "perplexity.txt"
GREEDY_PROMPTS = 8
GREEDY_TOKENS = 16


def quality(engine: Any, prompts: list[list[int]]) -> dict[str, Any]:
    """Perplexity of the fixed text and greedy tokens of the first chat prompts."""
    from loraplex.runtime.engine.request import GenerationRequest, SamplingParams

    ids = engine.loaded.tokenizer(PERPLEXITY_TEXT.read_text())["input_ids"]
    text = GenerationRequest("perplexity", ids, SamplingParams(max_new_tokens=1,
                                                                prompt_logprobs=True))
    first = engine.generate([text])[text.request_id][0]
    logprobs = [entry.logprob for entry in first.prompt_logprobs[1:]]
    greedy = [GenerationRequest(f"greedy-{index}", prompt, SamplingParams(
        max_new_tokens=GREEDY_TOKENS)) for index, prompt in enumerate(prompts[:GREEDY_PROMPTS])]
    results = engine.generate(greedy)
    return {"perplexity": math.exp(-sum(logprobs) / len(logprobs)),
            "greedy": [[event.token_id for event in results[request.request_id]]
                       for request in greedy]}


def bitsandbytes_checkpoint(name: str) -> Path:
    """The builtin model as transformers saves it after loading it through bitsandbytes
    (`CHECKPOINTS[name]`), made once in the cache."""
    from loraplex.runtime.config import DEFAULT_MODEL, EngineConfig
    from loraplex.runtime.models.sources import resolve_model_folder

    cache = Path(EngineConfig().cache_dir)
    folder = cache / "bench" / f"builtin-{name}"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = resolve_model_folder(DEFAULT_MODEL, cache)
    model = AutoModelForCausalLM.from_pretrained(
        source, device_map="cpu", quantization_config=BitsAndBytesConfig(
            **CHECKPOINTS[name], bnb_4bit_compute_dtype=torch.bfloat16))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def settings_of(variant: str) -> dict[str, Any]:
    """The engine settings of `variant` (a checkpoint variant: its folder as the model)."""
    settings = dict(VARIANTS[variant])
    checkpoint = settings.pop("checkpoint", None)
    if checkpoint is not None:
        settings["model"] = str(bitsandbytes_checkpoint(checkpoint))
    return settings


def server_rss_mb(variant: str) -> float:
    """Resident memory of `loraplex serve` with this variant once it answers /health."""
    import psutil

    from tests.integration.runtime_servers import start_runtime_server

    flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings_of(variant).items()]
    server = start_runtime_server("--device=cpu", *flags)
    try:
        return psutil.Process(server.process.pid).memory_info().rss / 1e6
    finally:
        server.stop()


def imports_rss_mb() -> float:
    """Resident memory of a process that has imported what `loraplex serve` imports before
    it loads a model: the floor under every variant's server figure."""
    code = ("import psutil, loraplex.cli, loraplex.runtime.server.launch; "
            "print(psutil.Process().memory_info().rss / 1e6)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return float(output.stdout.strip().splitlines()[-1])


def measure(variant: str, new_tokens: int, adapters: int) -> dict[str, Any]:
    """One variant in this process (run as a child of `main`)."""
    import psutil

    from loraplex.runtime.config import EngineConfig
    from loraplex.runtime.engine.engine import Engine

    process = psutil.Process()
    config = EngineConfig(device="cpu", kv_cache_bytes=512 << 20, max_num_seqs=64,
                          device_slots=adapters, **settings_of(variant))
    engine = Engine(config)
    row: dict[str, Any] = {"variant": variant, "engine_rss_mb": process.memory_info().rss / 1e6,
                           "weight_mb": engine.loaded.weight_bytes / 1e6}
    # imported after the reading: the benchmark's own imports (transformers' model classes
    # for bench.engine's comparison) are no part of a server's footprint
    from bench.engine import chat_prompts, run_engine
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.engine.request import GenerationRequest, SamplingParams

    prompts = chat_prompts(engine.loaded.tokenizer, 64)
    run_engine(engine, prompts[:2], 2)  # warm-up
    row.update(quality(engine, prompts))
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

    variants = args.variants.split(",")
    for variant in variants:  # made here, outside the measured processes
        settings_of(variant)
    rows = []
    for variant in variants:
        output = subprocess.run(
            [sys.executable, "-m", "bench.quantized", "--child", variant, "--new-tokens",
             str(args.new_tokens), "--adapters", str(args.adapters)],
            capture_output=True, text=True, check=True)
        rows.append(json.loads(output.stdout.strip().splitlines()[-1]))
        rows[-1]["server_rss_mb"] = server_rss_mb(variant)
    base, floor = rows[0], imports_rss_mb()
    print(f"server imports before any model: {floor:.0f} MB resident")
    print("| variant | server RSS MB | engine RSS MB | weights MB | tok/s b1 | tok/s b32 "
          "| tok/s b64 x adapters | b32 vs first | perplexity vs first | greedy = first |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        same = sum(a == b for a, b in zip(row["greedy"], base["greedy"], strict=True))
        print(f"| {row['variant']} | {row['server_rss_mb']:.0f} | {row['engine_rss_mb']:.0f} | "
              f"{row['weight_mb']:.0f} | "
              f"{row['tok_s_batch1']:.1f} | {row['tok_s_batch32']:.1f} | "
              f"{row['tok_s_batch64_adapters']:.1f} | "
              f"{row['tok_s_batch32'] / base['tok_s_batch32']:.2f}x | "
              f"{row['perplexity']:.2f} ({row['perplexity'] / base['perplexity']:.3f}x) | "
              f"{same}/{len(base['greedy'])} |")
    write_json(RESULTS, {"machine": machine_info(), "new_tokens": args.new_tokens,
                         "adapters": args.adapters, "imports_rss_mb": floor, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
