"""Reads what a pod says about itself: queue gauges from `/metrics`, adapters from
`GET /v1/adapters`, and the base model id from `/v1/models`.

Pure functions over response bodies, so they can be checked against a real pod's output
without a network. The adapter list is read with the admin API's own model
(`loraplex.contracts.adapters`); a report that does not match it raises `ValueError`,
which the poller counts as "nothing known", never as an error that stops routing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loraplex.contracts.adapters import AdapterList
from loraplex.contracts.metric_names import REQUESTS_RUNNING, REQUESTS_WAITING


@dataclass(frozen=True)
class QueueGauges:
    waiting: int
    running: int


def parse_queue_gauges(text: str) -> QueueGauges:
    """Sums each gauge over its labels (vLLM labels them by `model_name`). Missing gauges
    read as 0; unparseable text raises `ValueError`."""
    totals = {REQUESTS_WAITING: 0.0, REQUESTS_RUNNING: 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return QueueGauges(waiting=int(totals[REQUESTS_WAITING]),
                       running=int(totals[REQUESTS_RUNNING]))


def parse_resident_adapters(body: str | bytes) -> frozenset[str]:
    """Names of the adapters a pod holds or is fetching (any state but `error`), from the
    body of `GET /v1/adapters`; `ValueError` when it is not that answer."""
    listing = AdapterList.model_validate_json(body)
    return frozenset(entry.name for entry in listing.adapters if not entry.failed)


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
