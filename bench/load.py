"""Load generator for a runtime pod: throughput and latency vs concurrency and adapters.

Closed-loop clients (each sends its next request when the previous one ends) stream
`/generate_stream` over loopback and time every token, at several concurrencies, once
with all requests on one adapter and once spread over many (64 by default), so the cost
of mixing adapters in a batch shows directly. Reports requests/s, output tokens/s, time
to first token and inter-token latency (p50/p99) as a table, as JSON and as a PNG plot.

    python -m bench.load                       # starts its own pod on the builtin model
    python -m bench.load --url http://127.0.0.1:8080 --concurrency 1,8,32 --adapters 1,64

Adapters are random PEFT LoRA adapters (mixed ranks) written locally and registered with
`PUT /v1/adapters/{name}`, so the pod must be able to read this machine's disk (loopback).
`--ignore-eos` semantics are always on: every request generates exactly `--max-new-tokens`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

from loraplex.contracts.adapters import AdapterList, AdapterRegistration, Preload

RANKS = (8, 16, 32, 64)
PROMPT = ("<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a "
          "message in a bottle.<|im_end|>\n<|im_start|>assistant\n")


@dataclass
class RequestTiming:
    ttft_s: float
    inter_token_s: list[float]
    tokens: int
    duration_s: float


@dataclass
class LevelResult:
    adapters: int
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    error_samples: list[str] = field(default_factory=list)


def _percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else float("nan")


async def one_request(http: httpx.AsyncClient, url: str, adapter: str | None,
                      max_new_tokens: int) -> RequestTiming:
    parameters = {"max_new_tokens": max_new_tokens, "ignore_eos_token": True,
                  "adapter_id": adapter}
    started = time.perf_counter()
    stamps: list[float] = []
    async with http.stream("POST", f"{url}/generate_stream",
                           json={"inputs": PROMPT, "parameters": parameters}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event["error"])
            stamps.append(time.perf_counter())
    if not stamps:
        raise RuntimeError("the stream carried no token")
    return RequestTiming(stamps[0] - started, list(np.diff(stamps)), len(stamps),
                         stamps[-1] - started)


async def run_level(url: str, adapters: list[str | None], concurrency: int, requests: int,
                    max_new_tokens: int) -> LevelResult:
    """`requests` requests from `concurrency` closed-loop clients, adapters round-robin."""
    timings: list[RequestTiming] = []
    errors: list[str] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency + 4)

    async def client(http: httpx.AsyncClient) -> None:
        for index in counter:
            try:
                timings.append(await one_request(http, url, adapters[index % len(adapters)],
                                                 max_new_tokens))
            except (RuntimeError, httpx.HTTPError) as error:
                errors.append(str(error))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ttfts = [t.ttft_s for t in timings]
    itls = [gap for t in timings for gap in t.inter_token_s]
    return LevelResult(
        adapters=sum(1 for a in adapters if a), concurrency=concurrency, requests=len(timings),
        errors=len(errors), wall_s=round(wall, 3),
        requests_per_s=round(len(timings) / wall, 3),
        output_tokens_per_s=round(sum(t.tokens for t in timings) / wall, 2),
        ttft_p50_ms=_percentile_ms(ttfts, 50), ttft_p99_ms=_percentile_ms(ttfts, 99),
        itl_p50_ms=_percentile_ms(itls, 50), itl_p99_ms=_percentile_ms(itls, 99),
        error_samples=errors[:3])


def write_adapters(folder: Path, count: int, shape: str) -> list[Path]:
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.models.shapes import shape_config

    target = LoraTargetShapes.from_hf_config(shape_config(shape))
    return [write_random_adapter(folder / f"bench-{index}", target, RANKS[index % len(RANKS)],
                                 seed=index) for index in range(count)]


def register_adapters(url: str, folders: list[Path], token: str, timeout_s: float = 600
                      ) -> list[str]:
    """PUT every adapter (preloaded to host RAM) and wait until none is still loading."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    names = [folder.name for folder in folders]
    with httpx.Client(timeout=60, headers=headers, trust_env=False) as http:
        for name, folder in zip(names, folders, strict=True):
            registration = AdapterRegistration(source=str(folder), preload=Preload.HOST)
            response = http.put(f"{url}/v1/adapters/{name}", json=registration.wire_body())
            response.raise_for_status()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listing = AdapterList.model_validate_json(http.get(f"{url}/v1/adapters").content)
            held = listing.by_name()
            if all(name in held and held[name].loaded for name in names):
                return names
            failed = [n for n in names if n in held and held[n].failed]
            if failed:
                raise RuntimeError(f"adapters failed to load: {failed}")
            time.sleep(0.5)
    raise RuntimeError("adapters still loading after the timeout")


def print_table(results: list[LevelResult]) -> None:
    header = (f"{'adapters':>8} {'conc':>5} {'reqs':>5} {'err':>4} {'req/s':>8} "
              f"{'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r.adapters:>8} {r.concurrency:>5} {r.requests:>5} {r.errors:>4} "
              f"{r.requests_per_s:>8.2f} {r.output_tokens_per_s:>9.1f} {r.ttft_p50_ms:>7.0f}ms "
              f"{r.ttft_p99_ms:>7.0f}ms {r.itl_p50_ms:>6.0f}ms {r.itl_p99_ms:>6.0f}ms")


def plot(path: Path, results: list[LevelResult]) -> None:
    """Throughput and latency against concurrency, one line per adapter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for count in dict.fromkeys(result.adapters for result in results):
        points = [result for result in results if result.adapters == count]
        concurrency = [result.concurrency for result in points]
        label = f"{count} adapter{'s' * (count != 1)}" if count else "base model"
        left.plot(concurrency, [r.output_tokens_per_s for r in points], "o-", label=label)
        right.plot(concurrency, [r.itl_p50_ms for r in points], "o-", label=f"{label} ITL p50")
        right.plot(concurrency, [r.ttft_p50_ms for r in points], "x--",
                   label=f"{label} TTFT p50")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="output tokens/s",
             title="throughput")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms",
              title="latency")
    left.legend()
    right.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _ints(text: str, least: int = 1) -> list[int]:
    values = [int(item) for item in text.split(",") if item.strip()]
    if not values or any(value < least for value in values):
        raise argparse.ArgumentTypeError(f"expected integers >= {least}, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--url", help="a running pod; default: start one on the builtin model")
    parser.add_argument("--concurrency", type=_ints, default=[1, 4, 16])
    parser.add_argument("--adapters", type=lambda text: _ints(text, least=0), default=[1, 64],
                        help="adapter counts to spread requests over (0: the base model)")
    parser.add_argument("--requests", type=int, default=0,
                        help="requests per level (default: 4 per client, at least 8)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--shape", default="smollm2-135m", help="model shape the adapters fit")
    parser.add_argument("--admin-token", default="", help="the pod's admin token, if any")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra flag for the pod this tool starts (repeatable)")
    parser.add_argument("--json", default="bench/results/load.json",
                        help="where to write results (a PNG plot goes beside it)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, url: str) -> list[LevelResult]:
    results = []
    with tempfile.TemporaryDirectory(prefix="loraplex-bench-") as folder:
        paths = write_adapters(Path(folder), max(args.adapters), args.shape)
        names = register_adapters(url, paths, args.admin_token) if paths else []
        for count in args.adapters:
            adapters: list[str | None] = list(names[:count])
            if not adapters:
                adapters = [None]  # 0: the base model
            warm = asyncio.run(run_level(url, adapters, min(len(adapters), 8), len(adapters), 2))
            if warm.errors:
                raise RuntimeError(f"warm-up failed: {warm.error_samples}")
            for concurrency in args.concurrency:
                requests = args.requests or max(8, 4 * concurrency)
                result = asyncio.run(run_level(url, adapters, concurrency, requests,
                                               args.max_new_tokens))
                print_table([result])
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    if args.url is None:
        from tests.integration.runtime_servers import start_runtime_server

        extra = [arg for item in args.serve_arg for arg in item.split()]
        server = start_runtime_server("--device-slots", str(max(args.adapters + [1])), *extra)
        url = server.url
    else:
        url = args.url.rstrip("/")
    try:
        info = httpx.get(f"{url}/info", timeout=10, trust_env=False).json()
        results = run(args, url)
    finally:
        if server is not None:
            server.stop()
    print()
    print_table(results)
    report = {"machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                          "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "load_average": os.getloadavg()},
              "server": info, "max_new_tokens": args.max_new_tokens,
              "results": [asdict(result) for result in results]}
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(json_path.with_suffix(".png"), results)
    print(f"\nwrote {json_path} and {json_path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
