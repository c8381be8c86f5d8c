"""The placement table the router reads: ConfigMap `<bmd>-placements`, key `placements.json`.

Adapter name → addresses (`http://IP:8080`) of the pods that confirmed the load. It is
rewritten whole on every change, serialised canonically (sorted), so equal tables are
equal strings and an unchanged table is never rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata


def placements_json(table: Mapping[str, Iterable[str]]) -> str:
    canonical = {name: sorted(set(addresses)) for name, addresses in sorted(table.items())}
    return json.dumps(canonical, separators=(",", ":"))


def build_placements_configmap(owner: Owner,
                               table: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, naming.placements_name(owner.name),
                                   naming.COMPONENT_ROUTER),
        "data": {naming.PLACEMENTS_KEY: placements_json(table)},
    }


def read_placements(configmap: Mapping[str, Any]) -> dict[str, list[str]]:
    text = (configmap.get("data") or {}).get(naming.PLACEMENTS_KEY) or "{}"
    return json.loads(text)
