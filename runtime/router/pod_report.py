"""Reads what a pod says about itself: queue gauges from `/metrics`, adapters from
`GET /v1/adapters`, and the base model id from `/v1/models`.

Pure functions over response bodies, so they can be checked against a real pod's output
without a network. Parsing is lenient about shapes the pod may grow into (extra fields,
a list or a map of adapters) and strict about nothing: a report it cannot read counts as
"nothing known", never as an error that stops routing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
RESIDENT_STATES = frozenset({"downloading", "loading", "disk", "host", "device", "ready"})


@dataclass(frozen=True)
class QueueGauges:
    waiting: int
    running: int


def parse_queue_gauges(text: str) -> QueueGauges:
    """Sums each gauge over its labels (vLLM labels them by `model_name`). Missing gauges
    read as 0; unparseable text raises `ValueError`."""
    totals = {WAITING: 0.0, RUNNING: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return QueueGauges(waiting=int(totals[WAITING]), running=int(totals[RUNNING]))


def _adapter_entries(document: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if isinstance(document, Mapping):
        for key in ("adapters", "data"):
            if key in document:
                return _adapter_entries(document[key])
        return ((str(name), entry if isinstance(entry, Mapping) else {})
                for name, entry in document.items())
    if isinstance(document, list):
        named = []
        for entry in document:
            if isinstance(entry, Mapping):
                name = entry.get("name") or entry.get("id")
                if isinstance(name, str) and name:
                    named.append((name, entry))
        return named
    return ()


def parse_resident_adapters(document: Any) -> frozenset[str]:
    """Names of the adapters a pod holds or is fetching (state not `error`) from the JSON
    of `GET /v1/adapters`."""
    resident = set()
    for name, entry in _adapter_entries(document):
        state = str(entry.get("state", "device")).lower()
        if state in RESIDENT_STATES:
            resident.add(name)
    return frozenset(resident)


def parse_base_model(document: Any) -> str:
    """The base model's id from an OpenAI `/v1/models` list: its first entry without a
    `parent` (adapters name the base model as their parent); "" when there is none."""
    if not isinstance(document, Mapping) or not isinstance(document.get("data"), list):
        return ""
    entries = [entry for entry in document["data"] if isinstance(entry, Mapping)]
    for entry in entries:
        if entry.get("parent") in (None, "") and isinstance(entry.get("id"), str):
            return entry["id"]
    return ""
