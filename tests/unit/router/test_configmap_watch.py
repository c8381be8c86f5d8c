"""Following the placement ConfigMap through a Kubernetes API (kmock's emulator): the
first table from a GET, changes from the watch, bad data and deletion survived."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from loraplex.contracts.placements import PlacementTable, build_table
from loraplex.router.config import RouterConfig
from loraplex.router.configmap_watch import ConfigMapWatch
from loraplex.router.metrics import RouterMetrics

pytestmark = pytest.mark.timeout(30)
POD_A, POD_B = "http://10.0.0.5:8080", "http://10.0.0.6:8080"


def configmap(name: str, text: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ml"}, "data": {"placements.json": text}}


async def eventually(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def write_kubeconfig(path, server: str) -> str:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}"}}}}]
users: [{{name: u, user: {{token: sa-token}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u, namespace: ml}}}}]
current-context: x
""")
    return str(path)


async def test_the_table_follows_the_configmap_found_through_kubeconfig(kmock, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path / "config",
                                                      str(kmock.url).rstrip("/")))
    tables: list[PlacementTable] = []
    metrics = RouterMetrics()
    watch = ConfigMapWatch.from_config(RouterConfig(placements_configmap="bmd-placements"),
                                       tables.append, metrics)
    assert watch.namespace == "ml"  # the context's
    collection = f"{kmock.url}/api/v1/namespaces/ml/configmaps"
    patch = {"Content-Type": "application/merge-patch+json"}
    async with aiohttp.ClientSession() as api:
        first = build_table([POD_A], {"sql": [POD_A]}, generation=1).to_json()
        await api.post(collection, json=configmap("bmd-placements", first))
        task = asyncio.create_task(watch.run())
        try:
            await eventually(lambda: len(tables) == 1)
            assert tables[0].pods_for("sql") == (POD_A,)

            second = build_table([POD_A, POD_B], {"sql": [POD_B]}, generation=2).to_json()
            await api.patch(f"{collection}/bmd-placements", headers=patch,
                            json={"data": {"placements.json": second}})
            await eventually(lambda: len(tables) == 2)
            assert tables[1].pods_for("sql") == (POD_B,)

            # Someone else's ConfigMap, a broken table and a deletion change nothing.
            await api.post(collection, json=configmap("other", first))
            await api.patch(f"{collection}/bmd-placements", headers=patch,
                            json={"data": {"placements.json": "{"}})
            await eventually(lambda: metrics.registry.get_sample_value(
                "loraplex_router_placement_reloads_total", {"result": "error"}) == 1)
            await api.delete(f"{collection}/bmd-placements")
            await asyncio.sleep(0.2)
            assert len(tables) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    reads = [request for request in kmock if request.method.value == "GET"]  # the router's
    assert len(reads) >= 2
    assert {request.headers.get("Authorization") for request in reads} == {"Bearer sa-token"}


def test_without_a_cluster_or_kubeconfig_the_way_out_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="set KUBECONFIG"):
        ConfigMapWatch.from_config(RouterConfig(placements_configmap="x"), print,
                                   RouterMetrics())
    explicit = ConfigMapWatch.from_config(
        RouterConfig(placements_configmap="x", kube_api_url="http://127.0.0.1:1",
                     namespace="ml"), print, RouterMetrics())
    assert (explicit.kube.cluster.server, explicit.namespace) == ("http://127.0.0.1:1", "ml")
