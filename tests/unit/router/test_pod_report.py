"""Reading what pods report: gauges from a real prometheus_client exposition, adapters
in the admin API's contract and models in the OpenAI API's shape."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from loraplex.router.pod_report import (
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


def test_resident_adapters_are_every_reported_one_but_the_failed():
    document = {"adapters": [
        {"name": "a", "state": "device"}, {"name": "b", "state": "host"},
        {"name": "c", "state": "downloading"}, {"name": "d", "state": "error"},
        {"name": "e", "state": "disk", "tier": "disk", "from_a_newer_pod": True}]}
    assert parse_resident_adapters(json.dumps(document)) == {"a", "b", "c", "e"}


@pytest.mark.parametrize("body", [
    "surprise", "null", json.dumps([{"name": "a", "state": "device"}]),
    json.dumps({"adapters": {"a": {"state": "device"}}}),
    json.dumps({"adapters": [{"name": "a", "state": "ready"}]}),  # no pod sends `ready`
    json.dumps({"adapters": [{"name": "a"}]}),
])
def test_anything_but_the_admin_apis_answer_is_refused(body):
    with pytest.raises(ValueError):
        parse_resident_adapters(body)


def test_base_model_is_the_entry_without_parent():
    document = {"object": "list", "data": [
        {"id": "sql", "parent": "smol"}, {"id": "smol", "object": "model"}]}
    assert parse_base_model(document) == "smol"
    assert parse_base_model({"data": [{"id": "sql", "parent": "smol"}]}) == ""
    assert parse_base_model(["smol"]) == ""
