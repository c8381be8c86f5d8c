"""Reading what pods report: gauges from a real prometheus_client exposition, adapters
and models in the shapes the admin and OpenAI APIs use."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from loraplex.runtime.router.pod_report import (
    parse_base_model,
    parse_queue_gauges,
    parse_resident_adapters,
)


def test_queue_gauges_sum_over_labels_and_ignore_other_series():
    registry = CollectorRegistry()
    waiting = Gauge("vllm:num_requests_waiting", "q", ["model_name"], registry=registry)
    waiting.labels("a").set(3)
    waiting.labels("b").set(4)
    Gauge("vllm:num_requests_running", "r", ["model_name"], registry=registry).labels("a").set(9)
    Counter("loraplex_requests", "n", registry=registry).inc(100)
    gauges = parse_queue_gauges(generate_latest(registry).decode())
    assert (gauges.waiting, gauges.running) == (7, 9)


def test_missing_gauges_read_as_zero():
    gauges = parse_queue_gauges("")
    assert (gauges.waiting, gauges.running) == (0, 0)


def test_unparseable_metrics_raise_value_error():
    with pytest.raises(ValueError):
        parse_queue_gauges("vllm:num_requests_waiting{ not prometheus\n")


@pytest.mark.parametrize("document", [
    {"adapters": [{"name": "a", "state": "device"}, {"name": "b", "state": "host"},
                  {"name": "c", "state": "downloading"}, {"name": "d", "state": "error"}]},
    [{"name": "a", "state": "device"}, {"name": "b", "state": "HOST"},
     {"id": "c", "state": "downloading"}, {"name": "d", "state": "error"}, {"state": "host"}],
    {"adapters": {"a": {"state": "device"}, "b": {"state": "host"}, "c": {},
                  "d": {"state": "error"}}},
])
def test_resident_adapters_exclude_failed_ones(document):
    assert parse_resident_adapters(document) == {"a", "b", "c"}


def test_adapters_in_an_unknown_shape_mean_nothing_known():
    assert parse_resident_adapters("surprise") == frozenset()
    assert parse_resident_adapters(None) == frozenset()


def test_base_model_is_the_entry_without_parent():
    document = {"object": "list", "data": [
        {"id": "sql", "parent": "smol"}, {"id": "smol", "object": "model"}]}
    assert parse_base_model(document) == "smol"
    assert parse_base_model({"data": [{"id": "sql", "parent": "smol"}]}) == ""
    assert parse_base_model(["smol"]) == ""
