"""What reconcile asks pods to do, from plan and reports (pure: no servers needed)."""

from __future__ import annotations

import json

import pytest

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.actions import Load, Unload, canonical_source, plan_actions
from loraplex.operator.admin import AdminError, parse_adapter_list
from loraplex.operator.views import adapter_view


def view(name, source="hf://org/a", *, replicas=1, pinned=False, generation=1,
         observed=1, deleting=False, spec=None):
    body = {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                     "generation": generation,
                     **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {})},
        "spec": spec if spec is not None else {"baseModel": "bmd", "source": source,
                                               "replicas": replicas, "pinned": pinned},
        "status": {"observedGeneration": observed},
    }
    return adapter_view(body)


def held(name, state="host", source="hf://org/a", pinned=False):
    return AdapterStatus(name=name, state=state, source=source, pinned=pinned)


def test_missing_adapters_are_loaded_and_surplus_unloaded():
    views = {"a": view("a"), "b": view("b", pinned=True)}
    reports = {"p1": {"a": held("a"), "b": held("b", pinned=True)}, "p2": {}}
    plan = {"a": ("p2",), "b": ("p1", "p2")}
    assert plan_actions(plan, reports, views, {}) == [
        Load("p2", "a", "hf://org/a", False, "host"),
        Load("p2", "b", "hf://org/a", True, "device"),
        Unload("p1", "a"),
    ]


def test_foreign_adapters_and_unreachable_pods_are_left_alone():
    views = {"a": view("a")}
    reports = {"p1": {"mine-not": held("mine-not")}}
    assert plan_actions({"a": ("p1", "gone")}, reports, views, {}) == [
        Load("p1", "a", "hf://org/a", False, "host")]


def test_a_new_source_or_pin_reloads_and_a_fixed_spec_retries_a_failure():
    views = {"a": view("a", source="hf://org/a@v2"), "b": view("b", pinned=True),
             "c": view("c", generation=3, observed=2), "d": view("d")}
    reports = {"p": {"a": held("a"), "b": held("b"), "c": held("c", state="error"),
                     "d": held("d", state="error")}}
    plan = {name: ("p",) for name in views}
    assert [(a.adapter, type(a).__name__) for a in plan_actions(plan, reports, views, {})] \
        == [("a", "Load"), ("b", "Load"), ("c", "Load")]  # d: same spec, stays failed


def test_a_refused_load_is_not_retried_until_the_spec_changes():
    views = {"a": view("a", generation=4)}
    assert plan_actions({"a": ("p",)}, {"p": {}}, views, {("a", "p"): 4}) == []
    assert plan_actions({"a": ("p",)}, {"p": {}}, views, {("a", "p"): 3}) != []


def test_deleting_adapters_are_unloaded_invalid_ones_frozen():
    views = {"gone": view("gone", deleting=True), "bad": view("bad", spec={"baseModel": "bmd"})}
    reports = {"p": {"gone": held("gone"), "bad": held("bad")}}
    assert plan_actions({}, reports, views, {}) == [Unload("p", "gone")]


def test_sources_compare_in_the_pods_spelling():
    assert canonical_source("file:///mnt/x/") == "/mnt/x"
    assert canonical_source("/mnt/a/../b") == "/mnt/b"
    assert canonical_source("hf://org//repo/@v1") == "hf://org/repo@v1"
    assert canonical_source("s3://bucket/p//x/") == "s3://bucket/p/x"


def test_adapter_lists_parse_the_admin_apis_answer_and_nothing_else():
    entry = {"name": "a", "state": "device", "rank": 8, "size_bytes": 10, "source": "/x",
             "tier": "device", "added_by_a_newer_pod": 1}
    (parsed,) = parse_adapter_list(json.dumps({"adapters": [entry]})).values()
    assert parsed.loaded and parsed.rank == 8 and parsed.size_bytes == 10
    for wrong in ([entry], {"a": entry}, {"adapters": [{**entry, "state": "ready"}]},
                  {"adapters": [{**entry, "rank": "eight"}]}, "not json"):
        with pytest.raises(AdminError, match="unexpected /v1/adapters body"):
            parse_adapter_list(wrong if isinstance(wrong, str) else json.dumps(wrong))
