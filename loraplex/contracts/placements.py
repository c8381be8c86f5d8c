"""The placement table: which pods serve which adapter, as the operator writes it.

This module is the one definition of the JSON that the operator writes into the
ConfigMap `<name>-placements` (key `placements.json`) and the router reads, so both sides
import it and cannot drift. It imports only the standard library.

    {
      "version": 1,                        # optional; this module reads version 1
      "generation": 42,                    # optional; bumped by the writer on each change
      "baseModel": "my-bmd",               # optional; informational
      "pods": ["http://10.0.0.5:8080"],    # every ready pod, base URL without a path
      "adapters": {                        # adapter name -> pods that hold it, ready
        "sql-lora": ["http://10.0.0.5:8080"]
      }
    }

Pod URLs are `http(s)://host:port` (a trailing `/` is dropped). An adapter may list pods
that are not in `pods` (not ready right now): readers ignore those entries. Unknown keys
are ignored so that a newer writer does not break an older reader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
CONFIGMAP_KEY = "placements.json"

POD_URL_PATTERN = r"^https?://[^/?#\s]+/?$"

JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "loraplex placement table",
    "type": "object",
    "required": ["pods", "adapters"],
    "properties": {
        "version": {"const": SCHEMA_VERSION},
        "generation": {"type": "integer", "minimum": 0},
        "baseModel": {"type": "string"},
        "pods": {"type": "array", "items": {"type": "string", "pattern": POD_URL_PATTERN}},
        "adapters": {
            "type": "object",
            "propertyNames": {"minLength": 1},
            "additionalProperties": {
                "type": "array",
                "items": {"type": "string", "pattern": POD_URL_PATTERN},
            },
        },
    },
}


class PlacementError(ValueError):
    """The placement table is not valid JSON of the documented shape."""


def normalize_pod_url(url: str) -> str:
    """`http://10.0.0.5:8080/` -> `http://10.0.0.5:8080`; anything with a path is refused."""
    if not isinstance(url, str):
        raise PlacementError(f"a pod URL must be a string, got {type(url).__name__}")
    if not re.fullmatch(POD_URL_PATTERN, url):
        raise PlacementError(f"pod URL {url!r} is not http(s)://host:port without a path")
    return url.rstrip("/")


@dataclass(frozen=True)
class PlacementTable:
    """Ready pods and, per adapter, the ready pods that hold it."""

    pods: tuple[str, ...] = ()
    adapters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    generation: int = 0
    base_model: str = ""

    def pods_for(self, adapter: str) -> tuple[str, ...]:
        return self.adapters.get(adapter, ())

    def to_json(self) -> str:
        """Stable text (sorted keys and lists): equal tables give equal ConfigMap data."""
        document = {
            "version": SCHEMA_VERSION,
            "generation": self.generation,
            "baseModel": self.base_model,
            "pods": sorted(self.pods),
            "adapters": {name: sorted(urls) for name, urls in sorted(self.adapters.items())},
        }
        return json.dumps(document, indent=2, sort_keys=True) + "\n"


def build_table(pods: Iterable[str], adapters: Mapping[str, Iterable[str]], *,
                generation: int = 0, base_model: str = "") -> PlacementTable:
    """A table from plain collections, with URLs normalized and adapter pods kept only when
    ready (listed in `pods`)."""
    normalized: dict[str, str] = {}  # each URL checked once: 10,000 adapters name 32 pods

    def normalize(url: str) -> str:
        if not isinstance(url, str):
            return normalize_pod_url(url)  # refused, by name
        if url not in normalized:
            normalized[url] = normalize_pod_url(url)
        return normalized[url]

    ready = tuple(dict.fromkeys(normalize(url) for url in pods))
    ready_set = set(ready)
    placed: dict[str, tuple[str, ...]] = {}
    for name, urls in adapters.items():
        if not isinstance(name, str) or not name:
            raise PlacementError(f"adapter names must be non-empty strings, got {name!r}")
        holders = dict.fromkeys(normalize(url) for url in urls)
        placed[name] = tuple(url for url in holders if url in ready_set)
    return PlacementTable(ready, placed, generation, base_model)


def parse_placements(text: str | bytes) -> PlacementTable:
    """Read `placements.json`; raises `PlacementError` naming the first problem."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PlacementError(f"placement table is not JSON: {error}") from None
    _check_shape(document)
    return build_table(document["pods"], document["adapters"],
                       generation=document.get("generation", 0),
                       base_model=document.get("baseModel", ""))


def _check_shape(document: Any) -> None:
    """Raise `PlacementError` naming the first way `document` is not a placement table."""
    if not isinstance(document, dict):
        raise PlacementError("placement table must be a JSON object")
    version = document.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise PlacementError(f"placement table version {version!r} is not {SCHEMA_VERSION}")
    for key in ("pods", "adapters"):
        if key not in document:
            raise PlacementError(f"placement table lacks {key!r}")
    _check_lists(document["pods"], document["adapters"])
    generation = document.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise PlacementError(f"'generation' must be a non-negative integer, got {generation!r}")
    if not isinstance(document.get("baseModel", ""), str):
        raise PlacementError("'baseModel' must be a string")


def _check_lists(pods: Any, adapters: Any) -> None:
    if not isinstance(pods, list):
        raise PlacementError("'pods' must be a list of pod URLs")
    if not isinstance(adapters, dict):
        raise PlacementError("'adapters' must map adapter names to lists of pod URLs")
    for name, urls in adapters.items():
        if not isinstance(urls, list):
            raise PlacementError(f"adapters[{name!r}] must be a list of pod URLs")
