"""vLLM's request metrics, under vLLM's names and labels, so its Grafana dashboards work.

Matched against vLLM's own `PrometheusStatLogger` (`vllm/v1/metrics/loggers.py`, the
v0.10/v0.11 releases): every series carries `model_name` (the served model id) and
`engine` ("0": one engine per pod); the histograms use vLLM's buckets.
`vllm:time_per_output_token_seconds` is the older name of
`vllm:inter_token_latency_seconds` and gets the same observations. Per-request series are
updated here as requests finish; engine-wide ones (`vllm:num_preemptions_total`,
`vllm:cache_config_info`, the gauges) are read at scrape time by `EngineCollector`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from loraplex.runtime.engine.request import FinishReason

LABELS = ["model_name", "engine"]
ENGINE_INDEX = "0"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# vLLM's `finished_reason` label: an end token or a stop sequence is "stop"
FINISHED_REASONS = {FinishReason.EOS: "stop", FinishReason.STOP: "stop",
                    FinishReason.LENGTH: "length", FinishReason.ABORT: "abort"}


def one_two_five_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    buckets, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return buckets
            buckets.append(mantissa * scale)
        scale *= 10


class VllmRequestMetrics:
    def __init__(self, registry: CollectorRegistry, max_model_len: int) -> None:
        def counter(name: str, documentation: str, extra: list[str] | None = None) -> Counter:
            return Counter(name, documentation, LABELS + (extra or []), registry=registry)

        def histogram(name: str, documentation: str, buckets) -> Histogram:
            return Histogram(name, documentation, LABELS, buckets=buckets, registry=registry)

        token_buckets = one_two_five_buckets(max_model_len)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        self.request_success = counter("vllm:request_success",
                                       "Count of successfully processed requests.",
                                       ["finished_reason"])
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens",
                                               "Number of prefill tokens processed.",
                                               token_buckets)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Number of generation tokens processed.",
                                                   token_buckets)
        self.ttft = histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.inter_token = histogram("vllm:inter_token_latency_seconds",
                                     "Histogram of inter-token latency in seconds.",
                                     TPOT_BUCKETS)
        self.time_per_output_token = histogram(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds (the older name of "
            "vllm:inter_token_latency_seconds).", TPOT_BUCKETS)
        self.e2e_latency = histogram("vllm:e2e_request_latency_seconds",
                                     "Histogram of e2e request latency in seconds.",
                                     LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.",
                                    LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.",
                                      LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.",
                                     LATENCY_BUCKETS)
        self.inference_time = histogram("vllm:request_inference_time_seconds",
                                        "Histogram of time spent in RUNNING phase for request.",
                                        LATENCY_BUCKETS)

    def first_token(self, model_name: str, ttft_s: float) -> None:
        self.ttft.labels(model_name, ENGINE_INDEX).observe(ttft_s)

    def next_token(self, model_name: str, gap_s: float) -> None:
        self.inter_token.labels(model_name, ENGINE_INDEX).observe(gap_s)
        self.time_per_output_token.labels(model_name, ENGINE_INDEX).observe(gap_s)

    def finished(self, model_name: str, reason: FinishReason | None, prompt_tokens: int,
                 generated_tokens: int, times: RequestTimes) -> None:
        """One request ended; those that failed (`error`) are not vLLM successes."""
        labels = (model_name, ENGINE_INDEX)
        self.prompt_tokens.labels(*labels).inc(prompt_tokens)
        self.generation_tokens.labels(*labels).inc(generated_tokens)
        finished_reason = FINISHED_REASONS.get(reason) if reason is not None else None
        if finished_reason is None:
            return
        self.request_success.labels(*labels, finished_reason).inc()
        self.request_prompt_tokens.labels(*labels).observe(prompt_tokens)
        self.request_generation_tokens.labels(*labels).observe(generated_tokens)
        self.e2e_latency.labels(*labels).observe(times.e2e_s)
        self.queue_time.labels(*labels).observe(times.queued_s)
        self.prefill_time.labels(*labels).observe(times.prefill_s)
        self.decode_time.labels(*labels).observe(times.decode_s)
        self.inference_time.labels(*labels).observe(times.prefill_s + times.decode_s)


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Where one request's time went, in seconds, split as vLLM splits it: waiting in the
    queue, then prefill (until its first token), then decode (until its last token)."""

    e2e_s: float
    queued_s: float
    first_token_s: float | None  # from arrival; None if no token came
    last_token_s: float | None

    @property
    def prefill_s(self) -> float:
        end = self.first_token_s if self.first_token_s is not None else self.e2e_s
        return max(end - self.queued_s, 0.0)

    @property
    def decode_s(self) -> float:
        if self.first_token_s is None or self.last_token_s is None:
            return 0.0
        return self.last_token_s - self.first_token_s
