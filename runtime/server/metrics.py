"""Prometheus metrics of one runtime pod, in a registry of its own.

Request-level series (counters, TTFT and inter-token histograms, labelled per adapter)
are updated as tokens stream; engine and adapter gauges are read from the engine at
scrape time by `EngineCollector`, so they are never stale and cost nothing between
scrapes. Alongside `loraplex_*` the pod exports the vLLM names that the Gateway API
Inference Extension's endpoint picker scrapes (`vllm:num_requests_waiting`, ...) and
vLLM's request series (`vllm_metrics.py`), labelled with the served model's name.
A per-app `CollectorRegistry` (not the process-global one) lets several apps live in one
process, as tests do.

Per-adapter labels are bounded, because a client can name adapters: at most
`max_adapter_labels` adapters get series of their own (later ones share the `__other__`
label), and `prune_adapters` drops the series of adapters that are no longer registered
(a failed dynamic adapter, once forgotten, leaves no lines behind).
"""

from __future__ import annotations

from collections import Counter as Tally
from contextlib import suppress
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from loraplex.runtime.engine.request import FinishReason
from loraplex.runtime.server.vllm_metrics import RequestTimes, VllmRequestMetrics

BASE_LABEL = "__base__"  # the `adapter` label value of base-model requests
OTHER_LABEL = "__other__"  # adapters beyond the label budget
DEFAULT_MAX_ADAPTER_LABELS = 256

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COMPILE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class AdapterActivity:
    """Which adapters have requests waiting for their first token, and which are running.

    Kept by the server from the requests it forwards, for `vllm:lora_requests_info`.
    """

    waiting: Tally[str] = field(default_factory=Tally)
    running: Tally[str] = field(default_factory=Tally)

    def names(self, tally: Tally[str]) -> str:
        return ",".join(sorted(name for name, count in tally.items() if count > 0))


class RequestSeries:
    """The labelled children one engine request updates; `finish` is called exactly once."""

    def __init__(self, metrics: ServerMetrics, endpoint: str, adapter: str | None) -> None:
        self._metrics = metrics
        self._endpoint = endpoint
        self._adapter = adapter
        self.label = metrics.adapter_label(adapter)
        self.ttft = metrics.ttft.labels(self.label)
        self.inter_token = metrics.inter_token.labels(self.label)
        self._started_running = False
        self._tokens = (0, 0)  # (prompt, generated) once known
        if adapter:
            metrics.activity.waiting[adapter] += 1

    def first_token(self, ttft_s: float) -> None:
        if self._adapter and not self._started_running:
            waiting = self._metrics.activity.waiting
            waiting[self._adapter] -= 1
            if waiting[self._adapter] <= 0:
                del waiting[self._adapter]
            self._metrics.activity.running[self._adapter] += 1
        self._started_running = True
        self.ttft.observe(ttft_s)
        if self._metrics.vllm is not None:
            self._metrics.vllm.first_token(self._metrics.model_name, ttft_s)

    def next_token(self, gap_s: float) -> None:
        self.inter_token.observe(gap_s)
        if self._metrics.vllm is not None:
            self._metrics.vllm.next_token(self._metrics.model_name, gap_s)

    def record_tokens(self, prompt_tokens: int, generated_tokens: int) -> None:
        self._metrics.prompt_tokens.labels(self.label).inc(prompt_tokens)
        self._metrics.generation_tokens.labels(self.label).inc(generated_tokens)
        self._tokens = (prompt_tokens, generated_tokens)

    def finish(self, outcome: str, times: RequestTimes,
               reason: FinishReason | None = None) -> None:
        """The request ended: `outcome` for loraplex's series, `reason` (None unless it ran
        to an end or was aborted) for vLLM's."""
        metrics = self._metrics
        metrics.requests.labels(self._endpoint, self.label, outcome).inc()
        metrics.request_keys.setdefault(self.label, set()).add((self._endpoint, outcome))
        metrics.duration.labels(self.label).observe(times.e2e_s)
        if metrics.vllm is not None:
            metrics.vllm.finished(metrics.model_name, reason, *self._tokens, times)
        if self._adapter:
            tally = metrics.activity.running if self._started_running else \
                metrics.activity.waiting
            tally[self._adapter] -= 1
            if tally[self._adapter] <= 0:
                del tally[self._adapter]


class ServerMetrics:
    def __init__(self, max_adapter_labels: int = DEFAULT_MAX_ADAPTER_LABELS) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.activity = AdapterActivity()
        self.vllm: VllmRequestMetrics | None = None  # once the model's length is known
        self.model_name = ""
        self.max_adapter_labels = max_adapter_labels
        self.request_keys: dict[str, set[tuple[str, str]]] = {}  # label -> (endpoint, outcome)
        self.own_labels: set[str] = set()  # adapters with series of their own
        self.other_members: set[str] = set()  # adapters counted under OTHER_LABEL
        registry = self.registry
        self.requests = Counter(
            "loraplex_requests", "engine requests finished, by endpoint, adapter and outcome "
            "(length, eos_token, stop_sequence, error, aborted, rejected)",
            ["endpoint", "adapter", "outcome"], registry=registry)
        self.http_errors = Counter(
            "loraplex_http_errors", "requests answered with an error, by error_type",
            ["error_type"], registry=registry)
        self.prompt_tokens = Counter("loraplex_prompt_tokens", "prompt tokens processed",
                                     ["adapter"], registry=registry)
        self.generation_tokens = Counter("loraplex_generation_tokens", "tokens generated",
                                         ["adapter"], registry=registry)
        self.ttft = Histogram("loraplex_time_to_first_token_seconds",
                              "time from arrival to the first generated token", ["adapter"],
                              buckets=TTFT_BUCKETS, registry=registry)
        self.inter_token = Histogram("loraplex_inter_token_latency_seconds",
                                     "time between consecutive tokens of one request",
                                     ["adapter"], buckets=ITL_BUCKETS, registry=registry)
        self.duration = Histogram("loraplex_request_duration_seconds",
                                  "time from arrival to the last token", ["adapter"],
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.constrained_requests = Counter(
            "loraplex_constrained_requests", "requests with an output constraint, by kind "
            "(json_schema, json_object, regex, choice, grammar)", ["kind"], registry=registry)
        self.grammar_compile = Histogram(
            "loraplex_grammar_compile_seconds", "time to compile one output constraint "
            "(cache misses only)", buckets=COMPILE_BUCKETS, registry=registry)
        self.grammar_cache = Counter(
            "loraplex_grammar_cache_lookups", "compiled-grammar lookups, by result (hit, miss)",
            ["result"], registry=registry)

    def add_vllm_series(self, model_name: str, max_model_len: int) -> None:
        """Export vLLM's request series too, for `model_name` (once, when the model loads)."""
        if self.vllm is None:
            self.model_name = model_name
            self.vllm = VllmRequestMetrics(self.registry, max_model_len)

    def request_series(self, endpoint: str, adapter: str | None) -> RequestSeries:
        return RequestSeries(self, endpoint, adapter)

    def adapter_label(self, adapter: str | None) -> str:
        """The `adapter` label of a request: its name while the label budget lasts."""
        if not adapter:
            return BASE_LABEL
        if adapter in self.own_labels or len(self.own_labels) < self.max_adapter_labels:
            self.own_labels.add(adapter)
            return adapter
        self.other_members.add(adapter)
        return OTHER_LABEL

    def prune_adapters(self, registered: set[str]) -> None:
        """Drop the series of adapters no longer registered and with no request in flight
        (those of `__other__` once none of the adapters counted there is left)."""
        busy = {name for tally in (self.activity.waiting, self.activity.running)
                for name, count in tally.items() if count > 0}
        kept = registered | busy
        self.other_members &= kept
        labels = [label for label in self.own_labels if label not in kept]
        if not self.other_members:
            labels.append(OTHER_LABEL)
        for label in labels:
            self.own_labels.discard(label)
            for endpoint, outcome in self.request_keys.pop(label, set()):
                self.requests.remove(endpoint, label, outcome)
            for metric in (self.prompt_tokens, self.generation_tokens, self.ttft,
                           self.inter_token, self.duration):
                with suppress(KeyError):
                    metric.remove(label)
