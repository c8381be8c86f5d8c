"""The operator's own reads and writes to the API server (kopf does the watching).

Children are created when missing, merge-patched when they drift from what the builders
say, and deleted (only if owned) when the spec no longer wants them; the admin Secret is
only ever created; status is patched through the `status` subresource and never touches
`spec`. Built on lightkube's async client, which reads the same kubeconfig or in-cluster
service account as kopf. Adapter statuses go out many at once through several clients:
httpx's connection pool spends CPU on every request it holds each time one moves, so one
pool with 16 patches in flight cost twice the CPU per patch of four pools with 4 each,
and fewer in flight left a cycle waiting on the round trips.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import ConfigMap, Secret
from lightkube.types import PatchType

from loraplex.operator import naming
from loraplex.operator.builders import inference_pool

logger = logging.getLogger(__name__)

STATUS_CLIENTS = 8
STATUS_WRITES_PER_CLIENT = 4

BaseModelDeploymentResource = create_namespaced_resource(
    naming.GROUP, naming.VERSION, naming.BMD_KIND, naming.BMD_PLURAL)
AdapterResource = create_namespaced_resource(
    naming.GROUP, naming.VERSION, naming.ADAPTER_KIND, naming.ADAPTER_PLURAL)
InferencePoolResource = create_namespaced_resource(
    inference_pool.GROUP, inference_pool.VERSION, inference_pool.KIND, inference_pool.PLURAL)


def is_subset(wanted: Any, live: Any) -> bool:
    """Whether everything in `wanted` is in `live` (the server adds defaults, never drops)."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and is_subset(value, live[key]) for key, value in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(wanted) == len(live) and all(
            is_subset(w, v) for w, v in zip(wanted, live, strict=True))
    return wanted == live


def _drift_patch(wanted: Mapping[str, Any]) -> dict[str, Any]:
    """What a merge patch carries to put a child back in line (never its identity)."""
    meta = wanted["metadata"]
    patch = {key: value for key, value in wanted.items()
             if key not in ("apiVersion", "kind", "metadata")}
    patch["metadata"] = {"labels": meta.get("labels", {}),
                         "ownerReferences": meta.get("ownerReferences", [])}
    return patch


class Cluster:
    def __init__(self) -> None:
        self._client = AsyncClient(field_manager=naming.FIELD_MANAGER)
        self._status_clients = [self._client] + [
            AsyncClient(field_manager=naming.FIELD_MANAGER) for _ in range(STATUS_CLIENTS - 1)]
        self._next_status_client = itertools.cycle(self._status_clients)

    @property
    def status_writes_in_flight(self) -> int:
        """How many Adapter status patches to keep in flight."""
        return STATUS_CLIENTS * STATUS_WRITES_PER_CLIENT

    async def aclose(self) -> None:
        for client in self._status_clients:
            await client.close()

    async def ensure(self, wanted: dict[str, Any], why: str = "it drifted from its spec") -> str:
        """Create `wanted`, or patch it to match (`why`: logged). Returns
        created|patched|unchanged."""
        resource = resource_registry.load(wanted["apiVersion"], wanted["kind"])
        meta = wanted["metadata"]
        try:
            live = await self._client.get(resource, meta["name"], namespace=meta["namespace"])
        except ApiError as error:
            if error.status.code != 404:
                raise
            return await self.create(wanted)
        patch = _drift_patch(wanted)
        if is_subset(patch, live.to_dict()):
            return "unchanged"
        await self._client.patch(resource, meta["name"], patch, namespace=meta["namespace"],
                                 patch_type=PatchType.MERGE)
        logger.info("patched %s %s/%s: %s", wanted["kind"], meta["namespace"], meta["name"], why)
        return "patched"

    async def create(self, wanted: dict[str, Any]) -> str:
        """Create unless it exists (a 409 means another cycle won the race): never patch."""
        meta = wanted["metadata"]
        try:
            await self._client.create(from_dict(wanted), namespace=meta["namespace"])
        except ApiError as error:
            if error.status.code != 409:
                raise
            return "unchanged"
        logger.info("created %s %s/%s", wanted["kind"], meta["namespace"], meta["name"])
        return "created"

    async def delete_owned(self, api_version: str, kind: str, namespace: str, name: str,
                           owner_uid: str) -> bool:
        """Delete a child the owner no longer wants; an object it does not own is left be."""
        resource = resource_registry.load(api_version, kind)
        try:
            live = (await self._client.get(resource, name, namespace=namespace)).to_dict()
        except ApiError as error:
            if error.status.code != 404:
                raise
            return False
        owners = live.get("metadata", {}).get("ownerReferences") or []
        if not any(reference.get("uid") == owner_uid for reference in owners):
            return False
        try:
            await self._client.delete(resource, name, namespace=namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            return False
        logger.info("deleted %s %s/%s", kind, namespace, name)
        return True

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            secret = await self._client.get(Secret, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return secret.to_dict()

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            configmap = await self._client.get(ConfigMap, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return configmap.to_dict()

    async def patch_configmap_data(self, namespace: str, name: str,
                                   data: dict[str, str]) -> None:
        await self._client.patch(ConfigMap, name, {"data": data}, namespace=namespace,
                                 patch_type=PatchType.MERGE)

    async def patch_adapter_status(self, namespace: str, name: str,
                                   status: dict[str, Any]) -> None:
        await self._patch_status(next(self._next_status_client), AdapterResource, namespace,
                                 name, status)

    async def patch_bmd_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self._patch_status(self._client, BaseModelDeploymentResource, namespace, name,
                                 status)

    @staticmethod
    async def _patch_status(client: AsyncClient, resource: Any, namespace: str, name: str,
                            status: dict[str, Any]) -> None:
        try:
            await client.patch(resource.Status, name, {"status": status},
                               namespace=namespace, patch_type=PatchType.MERGE)
        except ApiError as error:
            if error.status.code != 404:  # deleted meanwhile: nothing to report on
                raise
