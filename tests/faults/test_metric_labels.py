"""Per-adapter metric labels stay bounded: a label budget with an `__other__` bucket, and
the series of adapters that are gone dropped at scrape time (the real prometheus client
renders the text)."""

from __future__ import annotations

from prometheus_client import generate_latest

from loraplex.runtime.server.metrics import OTHER_LABEL, ServerMetrics
from loraplex.runtime.server.vllm_metrics import RequestTimes


def _run(metrics: ServerMetrics, adapter: str | None) -> None:
    series = metrics.request_series("generate", adapter)
    series.first_token(0.01)
    series.next_token(0.002)
    series.record_tokens(3, 2)
    series.finish("length", RequestTimes(0.1, 0.0, None, None))


def _adapters_in(metrics: ServerMetrics) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return {part.split('"')[1] for part in text.split('adapter=')[1:]}


def test_labels_beyond_the_budget_share_other_and_gone_adapters_leave_no_series() -> None:
    metrics = ServerMetrics(max_adapter_labels=2)
    _run(metrics, None)
    for name in ("a", "b", "c", "d"):
        _run(metrics, name)
    assert _adapters_in(metrics) == {"__base__", "a", "b", OTHER_LABEL}
    metrics.prune_adapters({"a", "c"})  # c is counted under __other__: it stays
    assert _adapters_in(metrics) == {"__base__", "a", OTHER_LABEL}
    metrics.prune_adapters(set())
    assert _adapters_in(metrics) == {"__base__"}
    _run(metrics, "e")  # freed labels are handed out again
    assert _adapters_in(metrics) == {"__base__", "e"}


def test_an_adapter_with_a_request_in_flight_keeps_its_series() -> None:
    metrics = ServerMetrics()
    series = metrics.request_series("generate", "busy")
    series.first_token(0.01)
    metrics.prune_adapters(set())
    series.finish("length", RequestTimes(0.1, 0.0, None, None))
    assert "busy" in _adapters_in(metrics)
