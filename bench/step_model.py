"""The cost of one engine step at 8B shapes, counted from the real code without a GPU.

Runs the real model runner (`ModelRunner.execute`, unchanged) for one decode step and one
prefill chunk on meta tensors (shapes and dtypes, no data) under `StepCounter`, a
`TorchDispatchMode` that counts per op bytes read and written, FLOPs, kernel launches
and device-to-host syncs; the Triton launchers report their own launches through
`kernels.launch_costs` (they run nothing on meta tensors). Ops are classed by the module
that ran them (linears, attention, LoRA, norms/rotary, sampling, other) and priced on an
H200: `max(bytes / 4.8 TB/s, FLOPs / 990 TFLOP/s)` per op plus 2 us per launch (the
launch cost of a step replayed as a CUDA graph), beside the ideal step, which reads the
weights, the batch's KV and its adapters once.

    python -m bench.step_model --batch 64 --context 2048 --adapters 32 --rank 16 [--json]
    python -m bench.step_model --table    # batch 1/16/64 x context 512/2k/8k
    python -m bench.step_model --quantize int4 --group-size 128   # 4-bit decoder linears

With `--quantize` the decoder's linears hold weight-only int8/int4 weights, as `--quantize`
serves them; int4 products are the Triton dequantize-GEMM's launches, costed at half a
byte per weight plus the group tables, and the ideal step reads the weights as served.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch

from bench.step_counter import OP_CLASSES, StepCounter, classify_modules
from loraplex.runtime.adapters.slots import GROUP_NAMES, DeviceSlotPool
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.engine.kv_cache import KVCacheLayout, PagedKVCache
from loraplex.runtime.engine.model_runner import ModelRunner
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.engine.scheduler import ScheduledSequence
from loraplex.runtime.engine.sequence import Sequence
from loraplex.runtime.models.llama import LlamaForCausalLM
from loraplex.runtime.models.shapes import shape_config

H200_BYTES_PER_S = 4.8e12
H200_FLOPS = 990e12
LAUNCH_S = 2e-6  # per kernel launch inside a replayed CUDA graph
BLOCK_SIZE = 16
META = torch.device("meta")


@dataclass
class StepCost:
    modelled_ms: float
    ideal_ms: float
    launches_per_layer: float
    syncs: int
    per_class: dict[str, dict[str, float]]  # op class -> read/written bytes, flops, ...


def build_runner(model_name: str, num_seqs: int, context: int, adapters: int, rank: int,
                 quantize: str = "none", group_size: int = 128
                 ) -> tuple[ModelRunner, LlamaForCausalLM]:
    config = shape_config(model_name)
    with META:
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.reset_buffers()
    if quantize != "none":
        model.quantize_weights(quantize, group_size)
    layout = KVCacheLayout.of(config, BLOCK_SIZE, torch.bfloat16)
    blocks_per_seq = -(-context // BLOCK_SIZE) + 1  # as `sequences` lays them out
    kv_cache = PagedKVCache(layout, num_seqs * blocks_per_seq, META)
    runner = ModelRunner(model, kv_cache, META)
    if adapters:
        pool = DeviceSlotPool(LoraTargetShapes.from_hf_config(config), adapters, rank,
                              torch.bfloat16, META)
        for slot in range(adapters):  # as loading an adapter of `rank` on every module sets
            pool.ranks_host[slot] = rank
            pool.groups_host[slot] = frozenset(GROUP_NAMES)
        runner.lora_pool, runner.lora_backend = pool, "triton"
    return runner, model


def sequences(num_seqs: int, context: int, new_tokens: int, adapters: int
              ) -> list[ScheduledSequence]:
    """num_seqs sequences of `context` tokens whose last `new_tokens` are computed now."""
    blocks = -(-context // BLOCK_SIZE)
    scheduled = []
    for index in range(num_seqs):
        request = GenerationRequest(f"s{index}", [1] * context, SamplingParams(max_new_tokens=1))
        seq = Sequence(request, detokenizer=None)
        seq.num_computed_tokens = context - new_tokens
        seq.block_table = list(range(index * (blocks + 1), index * (blocks + 1) + blocks))
        seq.lora_slot = index % adapters if adapters else -1
        scheduled.append(ScheduledSequence(seq, new_tokens))
    return scheduled


def ideal_seconds(model: LlamaForCausalLM, num_seqs: int, context: int, adapters: int,
                  rank: int) -> float:
    """Weights as served (but the embedding table: only its rows are read), KV and
    adapters once."""
    config = model.config
    weights = model.streamed_weight_bytes()
    layout = KVCacheLayout.of(config, BLOCK_SIZE, torch.bfloat16)
    kv = num_seqs * context * layout.bytes_per_block // BLOCK_SIZE
    target = LoraTargetShapes.from_hf_config(config)
    lora = DeviceSlotPool.bytes_needed(target, min(adapters, num_seqs), rank, torch.bfloat16)
    return (weights + kv + (lora if adapters else 0)) / H200_BYTES_PER_S


def step_cost(model_name: str, num_seqs: int, context: int, new_tokens: int, adapters: int,
              rank: int, quantize: str = "none", group_size: int = 128) -> StepCost:
    runner, model = build_runner(model_name, num_seqs, context, adapters, rank, quantize,
                                 group_size)
    scheduled = sequences(num_seqs, context, new_tokens, adapters)
    with classify_modules(model, runner.sampler), StepCounter() as counter:
        runner.execute(scheduled)
    per_class = {kind: {"read_bytes": 0, "written_bytes": 0, "flops": 0, "launches": 0,
                        "syncs": 0, "modelled_ms": 0.0} for kind in OP_CLASSES}
    for op in counter.ops:
        row = per_class[op.kind]
        row["read_bytes"] += op.read
        row["written_bytes"] += op.written
        row["flops"] += op.flops
        row["launches"] += op.launches
        row["syncs"] += op.syncs
        seconds = max((op.read + op.written) / H200_BYTES_PER_S, op.flops / H200_FLOPS)
        row["modelled_ms"] += 1e3 * (seconds + op.launches * LAUNCH_S)
    layers = model.config.num_hidden_layers
    return StepCost(
        modelled_ms=sum(row["modelled_ms"] for row in per_class.values()),
        ideal_ms=1e3 * ideal_seconds(model, num_seqs, context, adapters, rank),
        launches_per_layer=counter.layer_launches / layers,
        syncs=sum(op.syncs for op in counter.ops), per_class=per_class)


def print_table(title: str, cost: StepCost) -> None:
    print(f"\n{title}: modelled {cost.modelled_ms:.2f} ms, ideal {cost.ideal_ms:.2f} ms "
          f"({cost.modelled_ms / cost.ideal_ms:.2f}x), {cost.launches_per_layer:.0f} launches "
          f"per layer, {cost.syncs} device-to-host syncs")
    print(f"{'op class':<14}{'read GB':>10}{'written GB':>12}{'TFLOP':>9}{'launches':>10}"
          f"{'syncs':>7}{'ms':>9}")
    for kind, row in cost.per_class.items():
        print(f"{kind:<14}{row['read_bytes'] / 1e9:>10.3f}{row['written_bytes'] / 1e9:>12.3f}"
              f"{row['flops'] / 1e12:>9.3f}{row['launches']:>10}{row['syncs']:>7}"
              f"{row['modelled_ms']:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=2048, help="prefill chunk tokens")
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--quantize", default="none", choices=("none", "int8", "int4"),
                        help="weight-only quantization of the decoder's linears")
    parser.add_argument("--group-size", type=int, default=128, help="inputs per int4 group")
    parser.add_argument("--json", action="store_true", help="one JSON object (decode step)")
    parser.add_argument("--table", action="store_true",
                        help="decode at batch 1/16/64 x context 512/2k/8k")
    args = parser.parse_args()
    weights = (args.quantize, args.group_size)
    if args.table:
        print(f"{'batch':>6}{'context':>9}{'modelled ms':>13}{'ideal ms':>10}{'ratio':>7}"
              f"{'launches/layer':>16}")
        for batch in (1, 16, 64):
            for context in (512, 2048, 8192):
                cost = step_cost(args.model, batch, context, 1, args.adapters, args.rank,
                                 *weights)
                print(f"{batch:>6}{context:>9}{cost.modelled_ms:>13.2f}{cost.ideal_ms:>10.2f}"
                      f"{cost.modelled_ms / cost.ideal_ms:>7.2f}{cost.launches_per_layer:>16.1f}")
        return
    decode = step_cost(args.model, args.batch, args.context, 1, args.adapters, args.rank,
                       *weights)
    if args.json:
        print(json.dumps({**asdict(decode), "model": args.model, "batch": args.batch,
                          "context": args.context, "adapters": args.adapters,
                          "rank": args.rank, "quantize": args.quantize}))
        return
    prefill = step_cost(args.model, 1, args.context, min(args.chunk, args.context),
                        min(args.adapters, 1), args.rank, *weights)
    print_table(f"decode: batch {args.batch}, context {args.context}, {args.adapters} "
                f"adapters of rank {args.rank}, weights {args.quantize}", decode)
    print_table(f"prefill: one chunk of {min(args.chunk, args.context)} tokens ending at "
                f"{args.context}", prefill)


if __name__ == "__main__":
    main()
