"""The placement table the router reads: ConfigMap `<bmd>-placements`, key `placements.json`.

The JSON shape is defined once, by the router (`loraplex.contracts.placements`,
standard library only, so importing it keeps the operator torch-free): every ready pod,
and per adapter the pods that confirmed the load. The table is rewritten whole, and only
when pods or adapters changed; `generation` counts the rewrites.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from loraplex.contracts.placements import (
    PlacementError,
    PlacementTable,
    build_table,
    parse_placements,
)
from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata


def placement_table(owner: Owner, pods: Iterable[str], adapters: Mapping[str, Iterable[str]],
                    generation: int = 0) -> PlacementTable:
    return build_table(pods, adapters, generation=generation, base_model=owner.name)


def same_placements(a: PlacementTable, b: PlacementTable) -> bool:
    """Equal apart from `generation`."""
    return sorted(a.pods) == sorted(b.pods) and \
        {k: sorted(v) for k, v in a.adapters.items()} == \
        {k: sorted(v) for k, v in b.adapters.items()}


def build_placements_configmap(owner: Owner, table: PlacementTable | None = None
                               ) -> dict[str, Any]:
    table = table or placement_table(owner, [], {})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, naming.placements_name(owner.name),
                                   naming.COMPONENT_ROUTER),
        "data": {naming.PLACEMENTS_KEY: table.to_json()},
    }


def read_placements(configmap: Mapping[str, Any] | None) -> PlacementTable | None:
    """The table in a ConfigMap body, or None when absent or unreadable (it is rewritten)."""
    text = ((configmap or {}).get("data") or {}).get(naming.PLACEMENTS_KEY)
    if not text:
        return None
    try:
        return parse_placements(text)
    except PlacementError:
        return None
