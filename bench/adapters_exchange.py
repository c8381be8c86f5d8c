"""Adapter exchange under a Zipf workload: 1,000 adapters, 16 device slots, RAM for 200.

1,000 synthetic adapters (ranks 4 and 8, all seven projections) are written to disk and
registered; the manager validates each in the background and keeps at most ~200 in host
RAM (the rest drop to the `disk` state). Requests whose adapters follow a Zipf law
(s = `--zipf`) run in a closed loop of `--concurrency` requests in flight (one that
finishes is replaced at once); each generates `--new-tokens` tokens. Reported: throughput
relative to the same loop when every request's adapter is one of 16 resident ones (same
ranks, no loads), in tokens per second and in tokens per model step (how full the
scheduler kept the batch: on a shared machine the steadier figure), p50/p99 time to
first token for requests whose adapter was on the device, in host RAM, or only on disk
when the request arrived, and the mean load time per tier from the manager's counters.

Default model: `tiny-llama` with random weights (`--load-format dummy`; 2 layers, hidden
64) so the run takes a few minutes on a 2-core CPU; the numbers measure the scheduler
and the tiers, not the model. Prints a table, writes JSON.

    python -m bench.adapters_exchange
    python -m bench.adapters_exchange --model builtin:smollm2-135m-instruct --load-format auto
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import machine_info, write_json
from loraplex.contracts.adapters import AdapterState, Tier
from loraplex.runtime.adapters.slots import DeviceSlotPool
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from loraplex.runtime.models.loader import load_model

RANKS = (4, 8)
PROMPT = [5, 17, 99, 240, 31, 8, 64, 12]


def zipf_choices(count: int, num_requests: int, s: float, seed: int) -> list[int]:
    weights = [1 / (rank + 1) ** s for rank in range(count)]
    return random.Random(seed).choices(range(count), weights=weights, k=num_requests)


def run_stream(engine: Engine, adapters: list[str], new_tokens: int, concurrency: int
               ) -> tuple[float, int, list[dict]]:
    """Seconds and model steps for the whole stream; per request: tier at arrival, TTFT.

    A closed loop: `concurrency` requests are in flight and each one that finishes is
    replaced by the next, so a batch runs full when every adapter is resident and shrinks
    exactly as much as requests wait for adapters.
    """
    pending = [GenerationRequest(f"x{i}", PROMPT, SamplingParams(max_new_tokens=new_tokens,
                                                                ignore_eos=True), adapter=name)
               for i, name in enumerate(adapters)]
    pending.reverse()  # pop() takes them in order
    records: dict[str, dict] = {}
    in_flight = steps = 0
    started = time.perf_counter()
    while pending or in_flight:
        while pending and in_flight < concurrency:
            request = pending.pop()
            records[request.request_id] = {"tier": engine.adapters.get(request.adapter).state,
                                           "arrived": time.perf_counter(), "ttft": None}
            engine.add_request(request)
            in_flight += 1
        for event in engine.step():
            record = records[event.request_id]
            if event.error:
                raise RuntimeError(f"request {event.request_id} failed: {event.error}")
            if record["ttft"] is None:
                record["ttft"] = time.perf_counter() - record["arrived"]
            in_flight -= event.finished
        steps += engine.last_step_ran
        if not engine.last_step_ran:
            time.sleep(0.002)
    return time.perf_counter() - started, steps, list(records.values())


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--load-format", default="dummy", choices=("auto", "dummy"))
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--device-slots", type=int, default=16)
    parser.add_argument("--host-adapters", type=int, default=200, help="host RAM budget")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--time-slice", type=float, default=EngineConfig().adapter_time_slice_s,
                        help="--adapter-time-slice-s of the engine")
    parser.add_argument("--out", default="bench/results/adapters_exchange.json")
    args = parser.parse_args(argv)

    probe = EngineConfig(model=args.model, load_format=args.load_format, device="cpu")
    loaded = load_model(probe)
    target = LoraTargetShapes.from_hf_config(loaded.hf_config)
    adapter_bytes = DeviceSlotPool.bytes_needed(target, 1, max(RANKS), loaded.dtype)
    with tempfile.TemporaryDirectory() as scratch:
        config = EngineConfig(model=args.model, load_format=args.load_format, device="cpu",
                              cache_dir=str(Path(scratch) / "cache"),
                              max_num_seqs=args.concurrency,
                              adapter_time_slice_s=args.time_slice,
                              device_slots=args.device_slots, max_lora_rank=max(RANKS),
                              host_bytes=args.host_adapters * adapter_bytes,
                              kv_cache_bytes=64 << 20)
        engine = Engine(config, loaded)
        written = time.perf_counter()
        names = []
        for index in range(args.adapters):
            name = f"a{index:04d}"
            folder = write_random_adapter(Path(scratch) / name, target,
                                          RANKS[index % len(RANKS)], seed=index)
            engine.adapters.register(name, str(folder))
            names.append(name)
        while any(i.state is AdapterState.DOWNLOADING for i in engine.adapters.list()):
            time.sleep(0.05)
        print(f"{args.adapters} adapters written and validated in "
              f"{time.perf_counter() - written:.1f} s", flush=True)
        choices = zipf_choices(args.adapters, args.requests, args.zipf, seed=0)
        resident = [names[i % args.device_slots] for i in choices]  # same ranks, 16 adapters
        # warm-up: puts all 16 on the device, so the all-resident run loads nothing
        run_stream(engine, names[: args.device_slots] * 2, 2, args.concurrency)
        resident_s, resident_steps, _ = run_stream(engine, resident, args.new_tokens,
                                                   args.concurrency)
        before = engine.adapters.stats()
        zipf_s, zipf_steps, records = run_stream(engine, [names[i] for i in choices],
                                                 args.new_tokens, args.concurrency)
        after = engine.adapters.stats()
        engine.close()

    tokens = args.requests * args.new_tokens
    tiers = {}
    for tier in (Tier.DEVICE, Tier.HOST, Tier.DISK):
        ttfts = [r["ttft"] for r in records if r["tier"] == tier]
        tiers[tier.value] = {"requests": len(ttfts), "ttft_p50_s": percentile(ttfts, 0.5),
                       "ttft_p99_s": percentile(ttfts, 0.99),
                       "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None}
    loads = {tier.value: {"loads": after.loads[tier] - before.loads[tier],
                    "mean_s": ((after.load_seconds[tier] - before.load_seconds[tier])
                               / max(1, after.loads[tier] - before.loads[tier]))}
             for tier in (Tier.HOST, Tier.DEVICE)}
    result = {
        "model": args.model, "load_format": args.load_format, "device": "cpu",
        "adapters": args.adapters, "requests": args.requests, "zipf_s": args.zipf,
        "device_slots": args.device_slots, "host_budget_adapters": args.host_adapters,
        "new_tokens": args.new_tokens, "ranks": list(RANKS),
        "concurrency": args.concurrency, "adapter_time_slice_s": args.time_slice,
        "distinct_adapters_requested": len(set(choices)),
        "all_resident_tokens_per_s": tokens / resident_s,
        "zipf_tokens_per_s": tokens / zipf_s,
        "relative_throughput": resident_s / zipf_s,
        # tokens per model step: the batch the scheduler kept full, whatever the machine's noise
        "all_resident_tokens_per_step": tokens / resident_steps,
        "zipf_tokens_per_step": tokens / zipf_steps,
        "relative_batch_fill": resident_steps / zipf_steps,
        "ttft_by_tier_at_arrival": tiers, "loads_during_zipf_run": loads,
        "device_evictions": after.evictions[Tier.DEVICE] - before.evictions[Tier.DEVICE],
        "host_evictions": after.evictions[Tier.HOST] - before.evictions[Tier.HOST],
        "machine": machine_info(),
    }
    print(f"\ndistinct adapters requested: {result['distinct_adapters_requested']}")
    print(f"throughput: zipf {result['zipf_tokens_per_s']:.1f} tok/s, all-resident "
          f"{result['all_resident_tokens_per_s']:.1f} tok/s "
          f"({result['relative_throughput']:.2f}x)")
    print(f"tokens per step: zipf {result['zipf_tokens_per_step']:.1f}, all-resident "
          f"{result['all_resident_tokens_per_step']:.1f} ({result['relative_batch_fill']:.2f}x)")
    print(f"{'tier at arrival':>16} {'requests':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12}")
    for tier, row in tiers.items():
        p50, p99 = row["ttft_p50_s"], row["ttft_p99_s"]
        print(f"{tier:>16} {row['requests']:>9} "
              f"{'-' if p50 is None else f'{p50 * 1e3:.1f}':>12} "
              f"{'-' if p99 is None else f'{p99 * 1e3:.1f}':>12}")
    for tier, row in loads.items():
        print(f"load to {tier}: {row['loads']:.0f} loads, mean {row['mean_s'] * 1e3:.1f} ms")
    out = Path(args.out)
    write_json(out, result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
