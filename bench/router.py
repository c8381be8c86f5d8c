"""What the router costs and what its affinity buys, on loopback.

1. Overhead: closed-loop clients send `/generate` to three upstreams directly (client i to
   upstream i mod 3) and through one router, at several concurrencies. Twice: against
   stand-in pods that answer after a fixed delay using next to no CPU (the router's own
   cost, plus its CPU time per request), then against real pods (end to end). Added
   latency = router percentile - direct percentile; throughput = ratio of requests/s.
2. Skew: one hot adapter (half the requests) and 100 cold ones (the other half, uniform),
   loaded on demand by real pods (`adapter_source: local`), through the router with each
   policy: affinity (ours), least-loaded, random. Reports output tokens/s and the adapter
   loads the pods counted themselves (`loraplex_adapter_loads_total` by tier; "host" is a
   cold load from the source). Each policy gets fresh adapter folders: every run starts
   cold.

    python -m bench.router                     # three tiny-llama pods, dummy weights
    python -m bench.router --quick             # smaller runs
    python -m bench.router --skip-pods         # stand-ins only: the router's own cost

Writes `<out>.json` and `<out>.png` and prints the tables. Pods, routers and the client
share this machine's cores: compare columns of one run, not runs on other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from loraplex.contracts.adapters import Tier
from tests.integration.runtime_servers import start_runtime_server

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
POD_HOSTS = ("127.0.3.2", "127.0.3.3", "127.0.3.4")  # apart from the tests' 127.0.2.x
ROUTER_HOST, PORT, STUB_PORT = "127.0.3.1", 8080, 8081
POLICIES = ("affinity", "least-loaded", "random")


@dataclass
class Level:
    mode: str  # direct | router | policy name
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    adapter_loads: dict[str, int] | None = None  # tier -> loads counted by the pods
    router_cpu_ms: float | None = None  # the router process's CPU time per request


async def closed_loop(urls: list[str], concurrency: int, total: int, bodies) -> Level:
    """`concurrency` clients, each sending its next request when the last one ended;
    client i uses urls[i % len(urls)]. `bodies(i)` is the JSON of request i."""
    latencies, tokens, errors, issued = [], 0, 0, iter(range(total))
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def client(index: int) -> None:
            nonlocal tokens, errors
            url = urls[index % len(urls)] + "/generate"
            for number in issued:
                started = time.perf_counter()
                async with session.post(url, json=bodies(number)) as response:
                    payload = await response.json(content_type=None)
                if response.status != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                tokens += payload["details"]["generated_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall = time.perf_counter() - started
    done = np.array(latencies or [float("nan")]) * 1000
    return Level("", concurrency, total, errors, wall, len(latencies) / wall, tokens / wall,
                 float(np.percentile(done, 50)), float(np.percentile(done, 99)))


def body(max_new_tokens: int, adapter: str | None = None) -> dict:
    parameters = {"max_new_tokens": max_new_tokens, "ignore_eos_token": True, "details": True}
    if adapter is not None:
        parameters.update(adapter_id=adapter, adapter_source="local")
    return {"inputs": PROMPT, "parameters": parameters}


def wait_ready(url: str, what: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start")


@contextmanager
def router(*args: str, log_dir: Path):
    command = [sys.executable, "-m", "loraplex.cli", "router", "--host", ROUTER_HOST,
               "--port", str(PORT), "--pod-poll-s", "1", "--log-level", "warning", *args]
    with open(log_dir / "router.log", "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{ROUTER_HOST}:{PORT}"
    try:
        wait_ready(url + "/ready", "router; see " + str(log_dir / "router.log"))
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), robust to a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_stub(address: str, delay_ms: float) -> None:
    """A pod stand-in that answers `/generate` after `delay_ms`, using next to no CPU, so
    that latency differences are the router's own. Not a pod: no engine, no adapters."""
    from aiohttp import web

    async def generate(request: web.Request) -> web.Response:
        parameters = (await request.json()).get("parameters") or {}
        await asyncio.sleep(delay_ms / 1000)
        tokens = int(parameters.get("max_new_tokens") or 1)
        return web.json_response({"generated_text": " x" * tokens, "details": {
            "finish_reason": "length", "generated_tokens": tokens, "prompt_tokens": 1}})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post("/generate", generate)
    app.router.add_get("/ready", ready)
    host, port = address.rsplit(":", 1)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)


@contextmanager
def stubs(delay_ms: float):
    command = [sys.executable, "-m", "bench.router", "--stub-delay-ms", str(delay_ms),
               "--serve-stub"]
    processes = [subprocess.Popen([*command, f"{host}:{STUB_PORT}"]) for host in POD_HOSTS]
    urls = [f"http://{host}:{STUB_PORT}" for host in POD_HOSTS]
    try:
        for url in urls:
            wait_ready(url + "/ready", "stand-in pod")
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def adapter_loads(pod_urls: list[str]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for url in pod_urls:
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
            for sample in family.samples:
                if sample.name == "loraplex_adapter_loads_total":
                    tier = sample.labels["tier"]
                    totals[tier] = totals.get(tier, 0) + int(sample.value)
    return totals


def write_adapters(root: Path, model: str, names: list[str]) -> list[str]:
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.models.shapes import shape_config

    target = LoraTargetShapes.from_hf_config(shape_config(model))
    return [str(write_random_adapter(root / name, target, rank=8, seed=seed))
            for seed, name in enumerate(names)]


def overhead(pod_urls: list[str], args, log_dir: Path, upstream: str) -> list[Level]:
    levels = []
    with router("--pods", ",".join(pod_urls), log_dir=log_dir) as (url, pid):
        for concurrency in args.concurrency:
            total = max(args.requests, 4 * concurrency)
            for mode, urls in (("direct", pod_urls), ("router", [url])):
                cpu_before = cpu_seconds(pid)
                level = asyncio.run(closed_loop(urls, concurrency, total,
                                                lambda _: body(args.max_new_tokens)))
                level.mode = f"{upstream}:{mode}"
                if mode == "router":
                    level.router_cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000 / total
                levels.append(level)
    return levels


def skew(pod_urls: list[str], args, log_dir: Path, adapter_root: Path) -> list[Level]:
    levels = []
    for policy in POLICIES:
        hot, *cold = write_adapters(adapter_root / policy, args.model,
                                    ["hot"] + [f"cold-{i}" for i in range(args.cold)])
        rng = random.Random(0)
        picks = [hot if rng.random() < 0.5 else rng.choice(cold)
                 for _ in range(args.skew_requests)]
        with router("--pods", ",".join(pod_urls), "--policy", policy,
                    log_dir=log_dir) as (url, _):
            before = adapter_loads(pod_urls)
            level = asyncio.run(closed_loop([url], args.skew_concurrency, len(picks),
                                            lambda i, picks=picks: body(args.max_new_tokens,
                                                                        picks[i])))
            after = adapter_loads(pod_urls)
        level.mode = policy
        level.adapter_loads = {tier: after[tier] - before.get(tier, 0) for tier in after}
        levels.append(level)
        print(f"  {policy:12s} {level.tokens_per_s:8.1f} tok/s  loads {level.adapter_loads}"
              f"  errors {level.errors}", flush=True)
    return levels


def table(title: str, levels: list[Level]) -> str:
    lines = [title, f"{'mode':>12} {'conc':>5} {'req':>5} {'err':>4} {'req/s':>8} "
             f"{'tok/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'cpu ms/req':>10}  adapter loads"]
    for level in levels:
        cpu = f"{level.router_cpu_ms:10.2f}" if level.router_cpu_ms is not None else " " * 10
        lines.append(f"{level.mode:>12} {level.concurrency:5d} {level.requests:5d} "
                     f"{level.errors:4d} {level.requests_per_s:8.1f} {level.tokens_per_s:9.1f} "
                     f"{level.p50_ms:9.2f} {level.p99_ms:9.2f} {cpu}  "
                     f"{level.adapter_loads or ''}")
    return "\n".join(lines)


def plot(path: Path, overhead_levels: list[Level], skew_levels: list[Level]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in dict.fromkeys(level.mode for level in overhead_levels):
        points = [level for level in overhead_levels if level.mode == mode]
        concurrency = [level.concurrency for level in points]
        left.plot(concurrency, [level.p50_ms for level in points], "o-", label=f"{mode} p50")
        left.plot(concurrency, [level.p99_ms for level in points], "x--", label=f"{mode} p99")
    left.set(xscale="log", xlabel="concurrency", ylabel="latency (ms)",
             title="/generate latency, direct vs router")
    left.legend()
    if skew_levels:
        names = [level.mode for level in skew_levels]
        right.bar(names, [level.tokens_per_s for level in skew_levels], color="tab:blue")
        right.set(ylabel="output tokens/s", title="1 hot + cold adapters, by policy")
        loads = right.twinx()
        loads.plot(names, [(level.adapter_loads or {}).get(Tier.HOST, 0)
                           for level in skew_levels],
                   "o", color="tab:red")
        loads.set_ylabel("cold loads (host tier)", color="tab:red")
        loads.set_ylim(bottom=0)
    else:
        right.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama", help="dummy-weight shape of the pods")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=200, help="requests per level (min)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--cold", type=int, default=100, help="cold adapters")
    parser.add_argument("--skew-requests", type=int, default=600)
    parser.add_argument("--skew-concurrency", type=int, default=16)
    parser.add_argument("--device-slots", type=int, default=8)
    parser.add_argument("--skip-skew", action="store_true", help="overhead only")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    parser.add_argument("--stub-delay-ms", type=float, default=20.0,
                        help="answer time of the stand-in pods used to isolate the router")
    parser.add_argument("--skip-pods", action="store_true", help="stand-in pods only")
    parser.add_argument("--serve-stub", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/router")
    args = parser.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.serve_stub, args.stub_delay_ms)
        return 0
    if args.quick:
        args.concurrency, args.requests, args.cold, args.skew_requests = [1, 8], 40, 20, 120
    work = Path(tempfile.mkdtemp(prefix="bench-router-"))
    (work / "adapters").mkdir()
    with stubs(args.stub_delay_ms) as stub_urls:
        overhead_levels = overhead(stub_urls, args, work, "stub")
    skew_levels: list[Level] = []
    if not args.skip_pods:
        with real_pods(args, work) as urls:
            overhead_levels += overhead(urls, args, work, "pods")
            if not args.skip_skew:
                skew_levels = skew(urls, args, work, work / "adapters")
    return report(args, overhead_levels, skew_levels)


@contextmanager
def real_pods(args, work: Path):
    pod_args = ("--model", args.model, "--load-format", "dummy", "--max-model-len", "512",
                "--max-num-seqs", "64", "--kv-cache-bytes", str(64 << 20), "--device-slots",
                str(args.device_slots), "--allow-dynamic-adapters", str(work / "adapters"),
                "--log-level", "warning")
    with ExitStack() as stack:
        pods = [start_runtime_server(*pod_args, host=host, port=PORT, log_dir=work, wait=False)
                for host in POD_HOSTS]
        for pod in pods:
            stack.callback(pod.stop)
        for pod in pods:  # started together, awaited one by one
            pod.wait_ready()
        yield [pod.url for pod in pods]


def report(args, overhead_levels: list[Level], skew_levels: list[Level]) -> int:
    document = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "python": platform.python_version()},
                "settings": vars(args),
                "overhead": [asdict(level) for level in overhead_levels],
                "added_latency": [
                    {"upstream": direct.mode.split(":")[0], "concurrency": direct.concurrency,
                     "added_p50_ms": routed.p50_ms - direct.p50_ms,
                     "added_p99_ms": routed.p99_ms - direct.p99_ms,
                     "throughput_ratio": routed.requests_per_s / direct.requests_per_s}
                    for direct, routed in zip(overhead_levels[::2], overhead_levels[1::2],
                                              strict=True)],
                "skew": [asdict(level) for level in skew_levels]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(document, indent=2))
    plot(out.with_suffix(".png"), overhead_levels, skew_levels)
    print(table("\nOverhead", overhead_levels))
    for row in document["added_latency"]:
        print(f"  {row['upstream']:5s} c={row['concurrency']:3d}: router adds "
              f"{row['added_p50_ms']:+.2f} ms p50, {row['added_p99_ms']:+.2f} ms p99; "
              f"throughput x{row['throughput_ratio']:.2f}")
    if skew_levels:
        print(table("\nSkew: 1 hot adapter (50%) + cold adapters, by policy", skew_levels))
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
