"""The objects a BaseModelDeployment owns besides placements: applied, repaired, reported.

The runtime and router Deployments, Services, RBAC, NetworkPolicies and the placement
ConfigMap are re-applied when the spec changes (a new generation: the change is the
user's, reached at once and logged as such) and every `children_resync_s` otherwise (what
differs then drifted, and is put back). The admin token Secret is made once and read.
"""

from __future__ import annotations

import time
from typing import Any

from lightkube import ApiError

from loraplex.operator import naming
from loraplex.operator.admin import AdminClient
from loraplex.operator.builders import (
    Owner,
    build_admin_secret,
    build_children,
    build_placements_configmap,
    inference_pool,
    network_policy,
    read_admin_token,
)
from loraplex.operator.cluster import Cluster
from loraplex.operator.config import OperatorConfig
from loraplex.operator.models import BaseModelDeploymentSpec

# the API server finds a child invalid or forbidden, or lacks its kind (a CRD not installed):
# a spec or setup problem to report, where anything else (5xx, timeouts) is retried by kopf
REFUSED_CODES = (400, 403, 404, 422)


class ChildObjects:
    def __init__(self, owner: Owner, cluster: Cluster, config: OperatorConfig) -> None:
        self.owner, self.cluster, self.config = owner, cluster, config
        self.admin: AdminClient | None = None
        self.applied: tuple[Any, ...] | None = None  # (generation, spec) last applied whole
        self.applied_at = 0.0

    async def aclose(self) -> None:
        if self.admin is not None:
            await self.admin.aclose()

    async def ensure(self, spec: BaseModelDeploymentSpec, generation: int | None) -> str | None:
        """Create or repair the children; what the API server refused (retried each cycle).

        A child the API server finds invalid (say, a user volume it cannot accept) does not
        stop the others, nor the adapters' reconcile on the pods that run: it is reported.
        """
        key = (generation, spec.model_dump_json())
        due = time.monotonic() - self.applied_at >= self.config.children_resync_s
        if key == self.applied and not due:
            return None
        why = ("it drifted from its spec" if key == self.applied
               else f"{naming.BMD_KIND} {self.owner.name} generation {generation}")
        refused: list[str] = []
        for child in build_children(self.owner, spec, self.config.router_image,
                                    self.config.operator_namespace):
            try:
                await self.cluster.ensure(child, why)
            except ApiError as error:
                if error.status.code not in REFUSED_CODES:
                    raise
                hint = f" ({inference_pool.MISSING_CRD_HINT})" if error.status.code == 404 \
                    and child["kind"] == inference_pool.KIND else ""
                refused.append(f"the API server refused {child['kind']} "
                               f"{child['metadata']['name']}: {error.status.message}{hint}")
        if not spec.network_policy.enabled:
            for name in network_policy.network_policy_names(self.owner):
                await self.cluster.delete_owned(network_policy.API_VERSION, network_policy.KIND,
                                                self.owner.namespace, name, self.owner.uid)
        if spec.inference_pool is None:
            await self.cluster.delete_owned(inference_pool.API_VERSION, inference_pool.KIND,
                                            self.owner.namespace,
                                            naming.inference_pool_name(self.owner.name),
                                            self.owner.uid)
        await self.cluster.create(build_placements_configmap(self.owner))
        if refused:
            return "; ".join(refused)
        self.applied, self.applied_at = key, time.monotonic()
        return None

    async def admin_client(self) -> AdminClient:
        if self.admin is not None:
            return self.admin
        name = naming.admin_secret_name(self.owner.name)
        secret = await self.cluster.get_secret(self.owner.namespace, name)
        if secret is None:
            secret = build_admin_secret(self.owner)
            if await self.cluster.create(secret) != "created":  # lost a race: read theirs
                secret = await self.cluster.get_secret(self.owner.namespace, name) or secret
        self.admin = AdminClient(read_admin_token(secret), self.config.admin_timeout_s)
        return self.admin
