"""Follows the placement table straight from the Kubernetes API: GET the ConfigMap, then
watch it, re-connecting with back-off when the stream ends or fails.

For routers that cannot mount the ConfigMap (a mount lags the API by up to a kubelet sync
period, about a minute; a watch sees a change at once). Plain aiohttp against the API
server with the pod's service-account token (re-read on every connection, since bound
tokens rotate), so the router needs neither torch nor a Kubernetes client library. The
watch filters by name itself as well as with `fieldSelector`, and keeps the last good
table when the ConfigMap is deleted or holds something unreadable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from loraplex.contracts.placements import (
    CONFIGMAP_KEY,
    PlacementError,
    PlacementTable,
    parse_placements,
)
from loraplex.router.config import RouterConfig
from loraplex.router.metrics import RouterMetrics

log = logging.getLogger(__name__)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_SECONDS = 300
MAX_BACKOFF_S = 30.0


class ConfigMapWatch:
    def __init__(self, api_url: str, namespace: str, name: str,
                 on_table: Callable[[PlacementTable], None], metrics: RouterMetrics, *,
                 token_path: Path | None = None, ca_path: Path | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.namespace = namespace
        self.name = name
        self.on_table = on_table
        self.metrics = metrics
        self.token_path = token_path
        self.ca_path = ca_path
        self._applied_text: str | None = None

    @classmethod
    def from_config(cls, config: RouterConfig, on_table: Callable[[PlacementTable], None],
                    metrics: RouterMetrics) -> ConfigMapWatch:
        """Explicit settings first, else the in-cluster service account and environment."""
        namespace = config.namespace
        if not namespace:
            namespace_file = SERVICE_ACCOUNT / "namespace"
            if not namespace_file.exists():
                raise ValueError("--placements-configmap needs --namespace outside a cluster")
            namespace = namespace_file.read_text().strip()
        api_url, token_path, ca_path = config.kube_api_url, None, None
        if not api_url:
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ValueError("--placements-configmap needs --kube-api-url outside a cluster")
            api_url = f"https://{host}:{port}"
            token_path, ca_path = SERVICE_ACCOUNT / "token", SERVICE_ACCOUNT / "ca.crt"
        return cls(api_url, namespace, config.placements_configmap, on_table, metrics,
                   token_path=token_path, ca_path=ca_path)

    def _headers(self) -> dict[str, str]:
        if self.token_path is None or not self.token_path.exists():
            return {}
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    async def run(self) -> None:
        ssl_context: ssl.SSLContext | bool = True
        if self.ca_path is not None and self.ca_path.exists():
            ssl_context = ssl.create_default_context(cafile=str(self.ca_path))
        backoff = 1.0
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                try:
                    await self.watch_once(session)
                    backoff = 1.0
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                    log.warning("watching ConfigMap %s/%s: %s: %s; again in %.0f s",
                                self.namespace, self.name, type(error).__name__, error, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def watch_once(self, session: aiohttp.ClientSession) -> None:
        """One GET and one watch stream, until the server ends it."""
        collection = f"{self.api_url}/api/v1/namespaces/{self.namespace}/configmaps"
        headers = self._headers()
        version = ""
        async with session.get(f"{collection}/{self.name}", headers=headers) as response:
            if response.status == 200:
                configmap = await response.json()
                self.apply(configmap)
                version = str(configmap.get("metadata", {}).get("resourceVersion") or "")
            elif response.status != 404:
                response.raise_for_status()
        params = {"watch": "true", "fieldSelector": f"metadata.name={self.name}",
                  "timeoutSeconds": str(WATCH_SECONDS)}
        if version:
            params["resourceVersion"] = version
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_SECONDS + 30)
        async with session.get(collection, params=params, headers=headers,
                               timeout=timeout) as response:
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


async def _json_lines(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Watch events, one JSON object a line, however long the line (a table of thousands
    of adapters is longer than aiohttp's line limit)."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if buffer.strip():
        yield json.loads(buffer)
