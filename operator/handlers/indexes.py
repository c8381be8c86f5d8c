"""Indexes over runtime pods and BaseModelDeployments, and the wake-ups they feed (the
Adapters' index is in adapters.py, with its own wake-ups).

Reconcile reads the indexes (no list calls per cycle); an event that may change the
outcome of a BMD's next cycle wakes that BMD's loop at once instead of at the next resync.
Every handler is a coroutine: kopf runs a plain function in a worker thread, a thread hop
per event that cost more than the handler itself with 10,000 Adapters.
"""

from __future__ import annotations

from typing import Any

import kopf

from loraplex.operator import naming
from loraplex.operator.config import OperatorConfig
from loraplex.operator.views import PodView, pod_view

RUNTIME_POD = {naming.LABEL_BASE_MODEL: kopf.PRESENT,
               naming.LABEL_COMPONENT: naming.COMPONENT_RUNTIME}
ADAPTERS = (naming.GROUP, naming.VERSION, naming.ADAPTER_PLURAL)
BASE_MODELS = (naming.GROUP, naming.VERSION, naming.BMD_PLURAL)


async def runtime_pods(namespace: str, labels: kopf.Labels, body: kopf.Body,
                       **_: Any) -> dict[tuple[str, str], PodView]:
    return {(namespace, labels[naming.LABEL_BASE_MODEL]): pod_view(body)}


async def base_models(namespace: str, name: str, meta: kopf.Meta,
                      **_: Any) -> dict[tuple[str, str], bool]:
    """BMDs that exist and are not being deleted: Adapters of any other are orphans."""
    return {} if meta.get("deletionTimestamp") else {(namespace, name): True}


async def wake_on_pod(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.state.wake((namespace, labels[naming.LABEL_BASE_MODEL]))


async def wake_on_base_model(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo,
                             **_: Any) -> None:
    """A spec change (say `kubectl scale bmd`) reaches the children at once, not at the next
    resync; the reconcile loop's body is kopf's live view, already updated."""
    status = body.get("status") or {}
    if body.get("metadata", {}).get("generation") != status.get("observedGeneration"):
        memo.state.wake((namespace, name))


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    kopf.index("v1", "pods", labels=RUNTIME_POD, id="runtime_pods",
               registry=registry)(runtime_pods)
    kopf.index(*BASE_MODELS, id="base_models", registry=registry)(base_models)
    kopf.on.event("v1", "pods", labels=RUNTIME_POD, id="wake_on_pod",
                  registry=registry)(wake_on_pod)
    kopf.on.event(*BASE_MODELS, id="wake_on_base_model",
                  registry=registry)(wake_on_base_model)
