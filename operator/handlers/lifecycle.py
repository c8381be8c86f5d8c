"""Operator start and stop: log in, close clients on exit, answer the liveness probe.

A registry of our own has none of kopf's default handlers, so the login is registered
here: the kubernetes client's in-cluster service account, else the kubeconfig.
"""

from __future__ import annotations

from typing import Any

import kopf

from loraplex.operator.config import OperatorConfig


async def close_clients(memo: kopf.Memo, **_: Any) -> None:
    await memo.state.aclose()


def reconcile_loops(memo: kopf.Memo, **_: Any) -> int:
    """Reported on /health: how many BaseModelDeployments this process reconciles."""
    return len(memo.state.reconcilers)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    kopf.on.login(id="login", registry=registry)(kopf.login_via_client)
    kopf.on.cleanup(id="close_clients", registry=registry)(close_clients)
    kopf.on.probe(id="reconcile_loops", registry=registry)(reconcile_loops)
