"""The three numbers of fault isolation, measured on a real pod.

1. RSS of the pod before, at peak and after four concurrent 10 MB prompts (all refused).
2. Load time of a local adapter alone, and behind eight S3 downloads from an endpoint
   that accepts and never answers (a local TCP server), through the admin API.
3. `/metrics` lines before, right after, and a negative-cache time after 1,000 requests
   naming dynamic adapters that do not exist.

    python -m bench.faults                      # builtin model; writes results/faults.json
    python -m bench.faults --model tiny-llama --load-format dummy

Run it inside a private network namespace on a shared machine (it binds loopback ports).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.report import machine_info, write_json
from loraplex.contracts.adapters import AdapterState
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.models.shapes import shape_config
from tests.faults.hung_endpoint import HungEndpoint
from tests.integration.runtime_servers import RuntimeServer, start_runtime_server

TEN_MB = 10 << 20
NUM_HUNG = 8
NEGATIVE_TTL_S = 5.0
RESULTS = Path(__file__).parent / "results" / "faults.json"


def rss_during_huge_prompts(pod: RuntimeServer) -> dict[str, Any]:
    process = psutil.Process(pod.process.pid)
    httpx.post(pod.url + "/generate", json={"inputs": "warm up"}, timeout=120)
    time.sleep(1)
    base = process.memory_info().rss
    peak, done = [base], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()

    def send(index: int) -> int:
        body = {"inputs": f"{index} word " * (TEN_MB // 7), "parameters": {"max_new_tokens": 2}}
        return httpx.post(pod.url + "/generate", json=body, timeout=600).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(send, range(4)))
    elapsed = time.perf_counter() - started
    time.sleep(2)
    done.set()
    sampler.join()
    after = process.memory_info().rss
    mib = 1 << 20
    return {"statuses": codes, "seconds": round(elapsed, 2), "rss_before_mib": base // mib,
            "rss_peak_mib": peak[0] // mib, "rss_after_mib": after // mib,
            "lasting_growth_mib": (after - base) // mib, "peak_growth_mib": (peak[0] - base) // mib}


def _load_seconds(client: httpx.Client, name: str, folder: Path) -> float:
    started = time.perf_counter()
    client.put(f"/v1/adapters/{name}", json={"source": str(folder)}).raise_for_status()
    settled = {AdapterState.HOST, AdapterState.DEVICE, AdapterState.ERROR}
    while AdapterState(client.get(f"/v1/adapters/{name}").json()["state"]) not in settled:
        time.sleep(0.002)
    return time.perf_counter() - started


def load_behind_hung_downloads(pod: RuntimeServer, folder: Path, hung: HungEndpoint
                               ) -> dict[str, Any]:
    # no kept-alive connections: the pod closes idle ones while the downloads start
    with httpx.Client(base_url=pod.url, timeout=60,
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        alone = sorted(_load_seconds(client, f"alone-{i}", folder) for i in range(5))[2]
        for index in range(NUM_HUNG):
            client.put(f"/v1/adapters/hung-{index}",
                       json={"source": f"s3://stalled-bucket/adapter-{index}"}).raise_for_status()
        while hung.num_connections < 4:
            time.sleep(0.01)
        behind = _load_seconds(client, "behind", folder)
        states = {client.get(f"/v1/adapters/hung-{i}").json()["state"] for i in range(NUM_HUNG)}
    return {"alone_ms": round(alone * 1000, 1), "behind_ms": round(behind * 1000, 1),
            "ratio": round(behind / alone, 2), "hung_states": sorted(states)}


def _metric_lines(pod: RuntimeServer) -> int:
    return len(httpx.get(pod.url + "/metrics", timeout=60).text.splitlines())


def metrics_after_failed_dynamic(pod: RuntimeServer, allowed: Path, count: int
                                 ) -> dict[str, Any]:
    def fail(index: int) -> int:
        body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, "adapter_source": "local",
                                               "adapter_id": str(allowed / f"missing-{index}")}}
        return httpx.post(pod.url + "/generate", json=body, timeout=120).status_code

    fail(-1)  # the error counters of this kind exist before counting
    time.sleep(NEGATIVE_TTL_S + 0.5)
    before = _metric_lines(pod)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = sorted(set(pool.map(fail, range(count))))
    right_after = _metric_lines(pod)
    time.sleep(NEGATIVE_TTL_S + 0.5)
    return {"requests": count, "statuses": codes, "lines_before": before,
            "lines_right_after": right_after, "lines_after_ttl": _metric_lines(pod),
            "negative_cache_s": NEGATIVE_TTL_S}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--dynamic-requests", type=int, default=1000)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    allowed = work / "allowed"
    allowed.mkdir()
    folder = write_random_adapter(work / "local", LoraTargetShapes.from_hf_config(
        shape_config("smollm2-135m")), rank=16, seed=1)
    with HungEndpoint() as hung:
        env = {"AWS_ENDPOINT_URL": hung.url, "AWS_ACCESS_KEY_ID": "bench",
               "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        pod = start_runtime_server("--model", args.model, "--load-format", args.load_format,
                                   "--allow-dynamic-adapters", str(allowed),
                                   "--dynamic-failure-ttl-s", str(NEGATIVE_TTL_S),
                                   env=env, log_dir=work)
        try:
            result = {"model": args.model,
                      "huge_prompts": rss_during_huge_prompts(pod),
                      "local_load": load_behind_hung_downloads(pod, folder, hung),
                      "dynamic_failures": metrics_after_failed_dynamic(
                          pod, allowed, args.dynamic_requests)}
        finally:
            pod.stop()
    for name, values in result.items():
        print(f"{name}: {values}")
    write_json(RESULTS, {**result, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
