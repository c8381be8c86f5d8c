"""Gauges read from the engine and the adapter manager at scrape time.

A custom Prometheus collector: nothing is copied between scrapes, and the values are
those of the moment Prometheus (or the router, or the Inference Extension's endpoint
picker) asks. Before the engine is loaded it reports only the server's own admission
gauges.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from loraplex.contracts.metric_names import REQUESTS_RUNNING, REQUESTS_WAITING
from loraplex.runtime.server.metrics import BASE_LABEL
from loraplex.runtime.server.probe_routes import served_dtype
from loraplex.runtime.server.state import ServerState
from loraplex.runtime.server.vllm_metrics import ENGINE_INDEX


def _gauge(name: str, documentation: str, value: float, labels: dict[str, str] | None = None
           ) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


class EngineCollector:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state = self.state
        yield _gauge("loraplex_admitted_sequences", "sequences admitted by the server and not "
                     "finished (running or waiting)", state.gate.in_flight)
        yield _gauge("loraplex_admission_capacity", "most sequences admitted at once "
                     "(max_num_seqs + max_waiting); more get 429", state.gate.capacity)
        engine = state.engine
        if engine is None:
            return
        stats = engine.stats()
        yield from self._engine_metrics(stats)
        yield from self._prefix_cache_metrics(stats)
        yield from self._adapter_metrics(engine.adapters)

    def _engine_metrics(self, stats: Any) -> Iterator[Metric]:
        model = {"model_name": self.state.model_id, "engine": ENGINE_INDEX}
        yield _gauge("loraplex_num_requests_running", "sequences in the running batch",
                     stats.num_running)
        yield _gauge("loraplex_num_requests_waiting", "sequences waiting for a batch slot",
                     stats.num_waiting)
        yield _gauge("loraplex_batch_size", "sequences in the batch of the latest step",
                     stats.num_running)
        yield _gauge("loraplex_kv_cache_usage_ratio", "share of KV cache blocks in use",
                     stats.kv_cache_usage)
        yield _gauge("loraplex_kv_cache_free_blocks", "free KV cache blocks",
                     stats.num_free_blocks)
        yield _gauge("loraplex_kv_cache_total_blocks", "KV cache blocks", stats.num_total_blocks)
        steps = CounterMetricFamily("loraplex_engine_steps", "forward passes")
        steps.add_metric([], stats.num_steps)
        yield steps
        preemptions = CounterMetricFamily("loraplex_preemptions", "sequences preempted for "
                                          "lack of KV blocks (recomputed later)")
        preemptions.add_metric([], stats.num_preemptions)
        yield preemptions
        # the names vLLM exports, scraped by the Gateway API Inference Extension
        yield _gauge(REQUESTS_RUNNING, "sequences in the running batch",
                     stats.num_running, model)
        yield _gauge(REQUESTS_WAITING, "sequences waiting for a batch slot",
                     stats.num_waiting, model)
        yield _gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full)",
                     stats.kv_cache_usage, model)
        vllm_preemptions = CounterMetricFamily("vllm:num_preemptions", "Cumulative number of "
                                               "preemption from the engine.", labels=list(model))
        vllm_preemptions.add_metric(list(model.values()), stats.num_preemptions)
        yield vllm_preemptions
        yield self._cache_config_info(stats)
        activity = self.state.metrics.activity
        yield _gauge("vllm:lora_requests_info", "adapters of running and waiting requests; "
                     "the value is the time of the scrape",
                     time.time(), {"max_lora": str(self.state.engine_config.device_slots),
                                   "running_lora_adapters": activity.names(activity.running),
                                   "waiting_lora_adapters": activity.names(activity.waiting)})

    def _cache_config_info(self, stats: Any) -> Metric:
        """vLLM's `vllm:cache_config_info`: the KV cache's settings as labels, value 1."""
        config = self.state.engine_config
        labels = {"block_size": str(stats.block_size),
                  "cache_dtype": served_dtype(self.state.engine, config.dtype),
                  "gpu_memory_utilization": str(config.kv_cache_fraction),
                  "num_gpu_blocks": str(stats.num_total_blocks), "num_cpu_blocks": "0",
                  "engine": ENGINE_INDEX}
        return _gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", 1,
                      labels)

    def _prefix_cache_metrics(self, stats: Any) -> Iterator[Metric]:
        """Prompt tokens looked up in the prefix cache and found there: vLLM's two counters
        (all adapters together) and ours per adapter."""
        cache = stats.prefix_cache
        model = [self.state.model_id, ENGINE_INDEX]
        for name, documentation, total in (
                ("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of "
                 "queried tokens.", cache.total_queries),
                ("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
                 "tokens.", cache.total_hits)):
            family = CounterMetricFamily(name, documentation, labels=["model_name", "engine"])
            family.add_metric(model, total)
            yield family
        for name, documentation, counts in (
                ("loraplex_prefix_cache_queries", "prompt tokens looked up in the prefix "
                 "cache, by adapter", cache.queries),
                ("loraplex_prefix_cache_hits", "prompt tokens found in the prefix cache "
                 "(not computed), by adapter", cache.hits)):
            family = CounterMetricFamily(name, documentation, labels=["adapter"])
            for adapter, count in sorted(counts.items(), key=lambda item: item[0] or ""):
                family.add_metric([adapter or BASE_LABEL], count)
            yield family
        yield _gauge("loraplex_prefix_cache_blocks", "KV blocks named in the prefix cache "
                     "(held by sequences or free until evicted)", stats.num_cached_blocks)

    def _adapter_metrics(self, manager: Any) -> Iterator[Metric]:
        stats = manager.stats()
        loads = CounterMetricFamily("loraplex_adapter_loads", "adapter loads completed, by "
                                    "tier (disk: download, host: parse, device: copy)",
                                    labels=["tier"])
        seconds = SummaryMetricFamily("loraplex_adapter_load_seconds", "time spent loading "
                                      "adapters, by tier", labels=["tier"])
        evictions = CounterMetricFamily("loraplex_adapter_evictions", "adapters evicted, by "
                                        "tier", labels=["tier"])
        resident = GaugeMetricFamily("loraplex_adapters_resident", "adapters held, by tier",
                                     labels=["tier"])
        resident_bytes = GaugeMetricFamily("loraplex_adapters_resident_bytes", "bytes of "
                                           "adapter weights held, by tier", labels=["tier"])
        for tier in stats.loads:
            loads.add_metric([tier], stats.loads[tier])
            seconds.add_metric([tier], stats.loads[tier], stats.load_seconds[tier])
            evictions.add_metric([tier], stats.evictions.get(tier, 0))
            resident.add_metric([tier], stats.resident.get(tier, 0))
            resident_bytes.add_metric([tier], stats.resident_bytes.get(tier, 0))
        yield from (loads, seconds, evictions, resident, resident_bytes)
        failures = CounterMetricFamily("loraplex_adapter_load_failures", "adapter loads that "
                                       "ended in an error")
        failures.add_metric([], stats.failures)
        yield failures
        by_state = GaugeMetricFamily("loraplex_adapters", "registered adapters, by state",
                                     labels=["state"])
        for name, count in sorted(Counter(info.state for info in manager.list()).items()):
            by_state.add_metric([name], count)
        yield by_state
