"""The decode step of a dummy Llama-3-8B on a GPU, beside the cost model's figure.

The real runner with captured decode graphs (batch buckets up to 64) steps batch
1/16/64 x context 512/2k/8k, every sequence with its own of `--adapters` rank-16 adapters
(random weights written into the slot pool) over a KV cache of random blocks; the median
step time (graph replay, LM head and sampling included) is printed next to
`bench.step_model`'s modelled and ideal times for the same shape. Needs CUDA.

    python -m bench.step_time [--adapters 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.step_model import BLOCK_SIZE, sequences, step_cost
from loraplex.runtime.adapters.slots import GROUP_NAMES, DeviceSlotPool
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.decode_graphs import DecodeGraphRunner
from loraplex.runtime.engine.kv_cache import KVCacheLayout, PagedKVCache
from loraplex.runtime.engine.model_runner import ModelRunner
from loraplex.runtime.models.loader import load_model

BATCHES = (1, 16, 64)
CONTEXTS = (512, 2048, 8192)
RANK = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    config = EngineConfig(model="llama-3-8b", load_format="dummy", dtype="bfloat16",
                          device="cuda", block_size=BLOCK_SIZE, max_num_seqs=max(BATCHES))
    loaded = load_model(config)
    hf_config, device = loaded.hf_config, loaded.device
    layout = KVCacheLayout.of(hf_config, BLOCK_SIZE, torch.bfloat16)
    max_context = max(CONTEXTS)
    kv_cache = PagedKVCache(layout, max(BATCHES) * (max_context // BLOCK_SIZE + 1), device)
    pool = None
    if args.adapters:
        pool = DeviceSlotPool(LoraTargetShapes.from_hf_config(hf_config), args.adapters, RANK,
                              torch.bfloat16, device)
        for tensor in (*pool.lora_a.values(), *pool.lora_b.values()):
            tensor.normal_(std=0.01)
        pool.ranks.fill_(RANK)
        for slot in range(args.adapters):
            pool.ranks_host[slot] = RANK
            pool.groups_host[slot] = frozenset(GROUP_NAMES)
    graphs = DecodeGraphRunner(loaded.model, kv_cache, max(BATCHES), max_context + 1,
                               capture=True)
    graphs.capture_all()
    runner = ModelRunner(loaded.model, kv_cache, device, lora_pool=pool,
                         lora_backend="triton" if pool is not None else "torch",
                         decode_graphs=graphs)
    print(f"{'batch':>6}{'context':>9}{'measured ms':>13}{'modelled ms':>13}{'ideal ms':>10}")
    for num_seqs in BATCHES:
        for context in CONTEXTS:
            scheduled = sequences(num_seqs, context, 1, args.adapters)
            times = []
            for _ in range(args.steps + 1):
                torch.cuda.synchronize()
                started = time.perf_counter()
                runner.execute(scheduled)  # ends in the sampled ids' copy to the host
                times.append(time.perf_counter() - started)
            cost = step_cost("llama-3-8b", num_seqs, context, 1, args.adapters, RANK)
            print(f"{num_seqs:>6}{context:>9}{1e3 * statistics.median(times[1:]):>13.2f}"
                  f"{cost.modelled_ms:>13.2f}{cost.ideal_ms:>10.2f}")


if __name__ == "__main__":
    main()
