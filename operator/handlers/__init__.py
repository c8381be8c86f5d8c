"""kopf handlers, kept thin: they pick inputs from indexes and call reconcile or status.

Handlers are registered on a registry built per operator run (`build_registry`), so
intervals come from the settings and a test can start the operator twice in a process.
"""

from __future__ import annotations

import kopf

from loraplex.operator.config import OperatorConfig
from loraplex.operator.handlers import adapters, base_models, indexes, lifecycle


def build_registry(config: OperatorConfig) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    for module in (lifecycle, indexes, base_models, adapters):
        module.register(registry, config)
    return registry


__all__ = ["build_registry"]
