"""Follows the placement table straight from the Kubernetes API: GET the ConfigMap, then
watch it, re-connecting with back-off when the stream ends or fails.

For routers that cannot mount the ConfigMap (a mount lags the API by up to a kubelet sync
period, about a minute; a watch sees a change at once). The API server and credentials
are found as every Kubernetes client finds them (lightkube's loader): the in-cluster
service account (its token re-read on every request, since bound tokens rotate), else
`KUBECONFIG`, else `~/.kube/config`, its context's namespace included; `--kube-api-url`
and `--namespace` override. The watch filters by name itself as well as with
`fieldSelector`, and keeps the last good table when the ConfigMap is deleted or holds
something unreadable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from lightkube.config import client_adapter
from lightkube.config.kubeconfig import KubeConfig, SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ConfigError

from loraplex.contracts.placements import (
    CONFIGMAP_KEY,
    PlacementError,
    PlacementTable,
    parse_placements,
)
from loraplex.router.config import RouterConfig
from loraplex.router.metrics import RouterMetrics

log = logging.getLogger(__name__)
kube_http = client_adapter.httpx  # the HTTP library lightkube builds its clients on
WATCH_SECONDS = 300
MAX_BACKOFF_S = 30.0


class ConfigMapWatch:
    def __init__(self, kube: SingleConfig, namespace: str, name: str,
                 on_table: Callable[[PlacementTable], None], metrics: RouterMetrics) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.on_table = on_table
        self.metrics = metrics
        self._applied_text: str | None = None

    @classmethod
    def from_config(cls, config: RouterConfig, on_table: Callable[[PlacementTable], None],
                    metrics: RouterMetrics) -> ConfigMapWatch:
        """`--kube-api-url` (no credentials) when given, else in-cluster or kubeconfig."""
        try:
            kube = (KubeConfig.from_one(cluster=Cluster(server=config.kube_api_url), user=User())
                    if config.kube_api_url else KubeConfig.from_env()).get()
        except ConfigError as error:
            raise ValueError(
                f"--placements-configmap needs a Kubernetes API: not in a cluster, and "
                f"{error}; set KUBECONFIG (or --kube-api-url)") from None
        return cls(kube, config.namespace or kube.namespace, config.placements_configmap,
                   on_table, metrics)

    def client(self) -> kube_http.AsyncClient:
        """An HTTP client for the API server with the configuration's credentials."""
        timeout = kube_http.Timeout(10.0, read=WATCH_SECONDS + 30)
        return client_adapter.AsyncClient(self.kube,
                                          client_adapter.ConnectionParams(timeout=timeout))

    async def run(self) -> None:
        backoff = 1.0
        async with self.client() as client:
            while True:
                try:
                    await self.watch_once(client)
                    backoff = 1.0
                except (kube_http.HTTPError, ValueError) as error:
                    log.warning("watching ConfigMap %s/%s: %s: %s; again in %.0f s",
                                self.namespace, self.name, type(error).__name__, error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def watch_once(self, client: kube_http.AsyncClient) -> None:
        """One GET and one watch stream, until the server ends it."""
        collection = f"/api/v1/namespaces/{self.namespace}/configmaps"
        version = ""
        response = await client.get(f"{collection}/{self.name}")
        if response.status_code == 200:
            configmap = response.json()
            self.apply(configmap)
            version = str(configmap.get("metadata", {}).get("resourceVersion") or "")
        elif response.status_code != 404:
            response.raise_for_status()
        params = {"watch": "true", "fieldSelector": f"metadata.name={self.name}",
                  "timeoutSeconds": str(WATCH_SECONDS)}
        if version:
            params["resourceVersion"] = version
        async with client.stream("GET", collection, params=params) as response:
            response.raise_for_status()
            async for event in _json_lines(response):
                kind, configmap = event.get("type"), event.get("object") or {}
                if kind == "ERROR":  # e.g. 410 Gone: the version is too old; list again
                    log.info("watch of ConfigMap %s ended: %s", self.name, configmap)
                    return
                if configmap.get("metadata", {}).get("name") != self.name:
                    continue
                if kind in ("ADDED", "MODIFIED"):
                    self.apply(configmap)
                elif kind == "DELETED":
                    log.warning("ConfigMap %s/%s deleted; keeping the last placement table",
                                self.namespace, self.name)

    def apply(self, configmap: dict[str, Any]) -> None:
        text = (configmap.get("data") or {}).get(CONFIGMAP_KEY)
        if text is None or text == self._applied_text:
            return
        try:
            table = parse_placements(text)
        except PlacementError as error:
            log.error("ConfigMap %s rejected, keeping the last table: %s", self.name, error)
            self.metrics.placement_reloads.labels("error").inc()
            return
        self._applied_text = text
        self.on_table(table)
        self.metrics.placement_reloads.labels("ok").inc()


async def _json_lines(response: kube_http.Response) -> AsyncIterator[dict[str, Any]]:
    """Watch events, one JSON object a line, however long the line (a table of thousands
    of adapters is one long line)."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
