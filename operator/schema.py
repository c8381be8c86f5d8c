"""Turns a pydantic model's JSON Schema into a Kubernetes *structural* OpenAPI v3 schema.

The API server only accepts structural schemas (every node typed, no `$ref`, no
`additionalProperties: false`, OpenAPI 3.0 spelling of exclusive bounds), so pydantic's
draft 2020-12 output is rewritten node by node rather than copied.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

DROPPED_KEYS = ("title", "$defs")


def structural_schema(model: type[BaseModel], *, keep_defaults: bool = True) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}), keep_defaults)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" not in node:
        return node
    name = node["$ref"].rsplit("/", 1)[-1]
    siblings = {key: value for key, value in node.items() if key != "$ref"}
    return {**defs[name], **siblings}


def _strip_null(node: dict[str, Any]) -> dict[str, Any]:
    """`X | None` → X: absence already means None, and the server rejects nulls."""
    options = node.get("anyOf")
    if not options:
        return node
    kept = [option for option in options if option.get("type") != "null"]
    if len(kept) == len(options):
        return node
    rest = {key: value for key, value in node.items() if key != "anyOf"}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def _convert(node: dict[str, Any], defs: dict[str, Any], keep_defaults: bool) -> dict[str, Any]:
    node = _resolve(_strip_null(_resolve(node, defs)), defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {key: value for key, value in node.items() if key != "allOf"}
        node = {**_resolve(node["allOf"][0], defs), **rest}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROPPED_KEYS:
            continue
        if key == "default" and (value is None or not keep_defaults):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out.update(minimum=value, exclusiveMinimum=True)
        elif key == "exclusiveMaximum":
            out.update(maximum=value, exclusiveMaximum=True)
        elif key == "properties":
            out[key] = {name: _convert(child, defs, keep_defaults)
                        for name, child in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, keep_defaults)
        elif key == "anyOf" and node.get("x-kubernetes-int-or-string"):
            out[key] = value
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = _convert(value, defs, keep_defaults)
            # `false` is the structural default once `properties` are listed
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" \
            not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out
