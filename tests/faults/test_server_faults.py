"""A real pod (`tiny-llama`, random weights) under hostile requests: huge prompts, a
`top_k` no tensor holds, a flood of dynamic adapters that do not exist, and SIGTERM
with long requests in flight.

Reproductions: four 10 MB prompts were tokenized in full before their 422 (seconds of
CPU, gigabytes of RSS that stayed); every failed dynamic adapter stayed registered with
its metric series; SIGTERM past the grace period closed streams without a word.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.runtime_servers import RuntimeServer, runtime_server

pytestmark = [pytest.mark.slow]
POD_ARGS = ("--model", "tiny-llama", "--load-format", "dummy", "--max-model-len", "2048",
            "--max-num-seqs", "8")
TEN_MB = 10 << 20
NEGATIVE_TTL_S = 1.0


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("allowed-adapters")


@pytest.fixture(scope="module")
def pod(tmp_path_factory, allowed) -> Iterator[RuntimeServer]:
    with runtime_server(*POD_ARGS, "--allow-dynamic-adapters", str(allowed),
                        "--dynamic-failure-ttl-s", str(NEGATIVE_TTL_S),
                        log_dir=tmp_path_factory.mktemp("faults-pod")) as server:
        yield server


def _rss(pod: RuntimeServer) -> int:
    return psutil.Process(pod.process.pid).memory_info().rss


def _generate(pod: RuntimeServer, inputs: str, **parameters) -> httpx.Response:
    return httpx.post(pod.url + "/generate", timeout=120,
                      json={"inputs": inputs, "parameters": parameters})


def test_huge_prompts_are_refused_before_tokenizing(pod) -> None:
    _generate(pod, "warm up", max_new_tokens=2)
    base = _rss(pod)
    peak = [base]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], _rss(pod))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: _generate(pod, f"{i} word " * (TEN_MB // 7),
                                                    max_new_tokens=2), range(4)))
    elapsed = time.perf_counter() - started
    sampling.set()
    sampler.join()
    after = _rss(pod)
    for answer in answers:
        assert answer.status_code == 422
        assert "characters" in answer.json()["error"]
    print(f"4 x 10 MB prompts: refused in {elapsed:.2f} s; RSS {base >> 20} MiB before, "
          f"peak {peak[0] >> 20} MiB, {after >> 20} MiB after")
    assert after - base < 300 << 20 and peak[0] - base < 1 << 30
    assert elapsed < 10
    # a long prompt that keeps only its end is still served, from its end alone
    kept = _generate(pod, "x " * (TEN_MB // 4), max_new_tokens=2, truncate=32)
    assert kept.status_code == 200, kept.text


def test_a_huge_top_k_does_not_fail_its_neighbours(pod) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        hostile = pool.submit(_generate, pod, "hello", max_new_tokens=8, do_sample=True,
                              top_k=2**63, temperature=1.0)
        sampled = pool.submit(_generate, pod, "hello", max_new_tokens=8, do_sample=True,
                              top_k=20, seed=3)
        greedy = pool.submit(_generate, pod, "hello", max_new_tokens=8)
    for answer in (hostile.result(), sampled.result(), greedy.result()):
        assert answer.status_code == 200, answer.text


def _metric_series(pod: RuntimeServer) -> list[str]:
    """The /metrics lines without their values (a count of series and what they are)."""
    text = httpx.get(pod.url + "/metrics", timeout=30).text
    return [line.rsplit(" ", 1)[0] for line in text.splitlines()]


def test_failed_dynamic_adapters_are_forgotten_with_their_metrics(pod, allowed) -> None:
    _generate(pod, "warm up", max_new_tokens=2)
    # one failure first, so that the error counters of its kind exist before counting
    _generate(pod, "hi", max_new_tokens=2, adapter_id=str(allowed / "first"),
              adapter_source="local")
    time.sleep(NEGATIVE_TTL_S + 0.2)
    before = _metric_series(pod)
    codes = set()
    for index in range(60):
        answer = _generate(pod, "hi", max_new_tokens=2, adapter_id=str(allowed / f"no-{index}"),
                           adapter_source="local")
        codes.add(answer.status_code)
        assert answer.json()["error_type"] in ("generation", "not_found")
    assert codes <= {404, 424}
    again = _generate(pod, "hi", adapter_id=str(allowed / "no-0"), adapter_source="local")
    assert again.status_code == 424  # remembered within the negative-cache time
    time.sleep(NEGATIVE_TTL_S + 0.2)
    after = _metric_series(pod)
    assert len(after) == len(before), sorted(set(after) ^ set(before))
    adapters = httpx.get(pod.url + "/v1/adapters", timeout=30).json()
    assert not [a for a in adapters["adapters"] if a["name"].startswith("dynamic-")], adapters


def _stream_events(response: httpx.Response) -> Iterator[dict]:
    for line in response.iter_lines():
        if line.startswith("data:"):
            yield json.loads(line[5:])


@pytest.mark.timeout(300)
def test_sigterm_tells_every_request_it_was_cut(tmp_path) -> None:
    with runtime_server(*POD_ARGS, "--shutdown-grace-s", "1", log_dir=tmp_path) as pod:
        body = {"inputs": "a long story", "parameters": {"max_new_tokens": 2000,
                                                         "ignore_eos_token": True}}
        plain: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: plain.setdefault(
            "answer", httpx.post(pod.url + "/generate", json=body, timeout=120)))
        worker.start()
        with httpx.stream("POST", pod.url + "/generate_stream", json=body,
                          timeout=120) as stream:
            events = _stream_events(stream)
            first = [next(events) for _ in range(3)]
            pod.process.send_signal(signal.SIGTERM)
            rest = list(events)
        worker.join(120)
        assert pod.process.wait(60) == 0
    assert all(event.get("token") for event in first)
    assert rest and rest[-1].get("error_type") == "incomplete_generation", rest[-3:]
    answer = plain["answer"]
    assert answer.status_code == 503
    assert answer.json()["error_type"] == "incomplete_generation"
    assert "Traceback" not in pod.log_text()
