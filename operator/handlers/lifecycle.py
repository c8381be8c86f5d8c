"""Operator start and stop: close clients on exit, answer the liveness probe."""

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
    kopf.on.cleanup(id="close_clients", registry=registry)(close_clients)
    kopf.on.probe(id="reconcile_loops", registry=registry)(reconcile_loops)
