"""Adapter handlers: the Adapter index and its wake-ups, unload before deletion, and
Adapters whose base model is gone.

Indexing an Adapter wakes its BMD's reconcile loop when the loop has something to do (a new
Adapter, a spec change, a deletion): done in the index function, which kopf runs on every
Adapter event anyway, rather than in an event handler beside it, whose invocation per event
cost a tenth of the operator's CPU with 10,000 Adapters. A removed Adapter needs no wake-up:
its finalizer was only released once its loop had unloaded it, and the periodic re-check
catches the rest. Deleting an Adapter is held by the finalizer until
that loop has seen that no reachable pod holds it any more (the loop does the unloading:
it is the single writer of placements). An Adapter whose BMD does not exist is reported
`Pending` with reason `BaseModelNotFound`, never left stuck in its last phase: checked on
each of its events, and for all its Adapters when a BMD goes (no per-Adapter timer: with
10,000 Adapters those timers alone kept a core busy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from loraplex.operator.actions import spec_changed_since_status
from loraplex.operator.conditions import merge_patch_for, now_iso
from loraplex.operator.config import OperatorConfig
from loraplex.operator.handlers.indexes import ADAPTERS, BASE_MODELS
from loraplex.operator.state import OperatorState
from loraplex.operator.status import BASE_MODEL_NOT_FOUND, INVALID_SPEC, pending_status
from loraplex.operator.views import AdapterView, adapter_view

logger = logging.getLogger(__name__)


async def unload_before_delete(name: str, namespace: str, body: kopf.Body, memo: kopf.Memo,
                               base_models: kopf.Index, **_: Any) -> None:
    """Waits here (an ordinary wait, logged at info) rather than failing the handler to be
    retried: kopf logs every retry at ERROR, and a deletion is no error."""
    state = memo.state
    key = (namespace, adapter_view(body).base_model)
    deadline = time.monotonic() + state.config.unload_timeout_s
    logged = False
    while key in base_models:  # no base model: no pods hold it
        reconciler = state.reconcilers.get(key)
        if reconciler is not None and name in reconciler.unloaded:
            return
        if time.monotonic() >= deadline:
            raise kopf.TemporaryError(f"the pods of {key[1]} did not unload {name} within "
                                      f"{state.config.unload_timeout_s:.0f} s",
                                      delay=state.config.loading_poll_s)
        if not logged:
            logger.info("waiting for the pods of %s to unload %s", key[1], name)
            logged = True
        state.wake(key)
        await asyncio.sleep(state.config.loading_poll_s)


async def adapters_by_base(namespace: str, body: kopf.Body, memo: kopf.Memo,
                           base_models: kopf.Index, **_: Any
                           ) -> dict[tuple[str, str], AdapterView]:
    """The index of Adapters by base model; wakes the loop or reports an orphan on the way
    (a failed report is logged, as kopf logs a failed event handler: the Adapter is
    indexed all the same)."""
    view = adapter_view(body)
    key = (namespace, view.base_model)
    if key in base_models and (view.deleting or not view.status
                               or spec_changed_since_status(view)):
        memo.state.wake(key)
    try:
        await report_orphan(memo.state, view, base_models)
    except Exception:
        logger.exception("could not report Adapter %s/%s as orphaned", namespace, view.name)
    return {key: view}


async def on_base_model_gone(type: str, namespace: str, name: str, memo: kopf.Memo,
                             base_models: kopf.Index, adapters_by_base: kopf.Index,
                             **_: Any) -> None:
    """Its reconcile loop has stopped: its Adapters are reported here."""
    if type != "DELETED":
        return
    for view in list(adapters_by_base.get((namespace, name), [])):
        await report_orphan(memo.state, view, base_models)


async def report_orphan(state: OperatorState, view: AdapterView,
                        base_models: kopf.Index) -> None:
    if view.deleting:
        return
    if view.spec is None:
        reason, message = INVALID_SPEC, view.spec_error or "invalid spec"
    elif (view.namespace, view.base_model) not in base_models:
        reason = BASE_MODEL_NOT_FOUND
        message = f"BaseModelDeployment {view.base_model!r} not found in {view.namespace!r}"
    else:
        return  # the BMD's reconcile loop owns this Adapter's status
    status = pending_status(view, reason, message, now_iso())
    if status != view.status:
        await state.cluster.patch_adapter_status(view.namespace, view.name,
                                                 merge_patch_for(view.status, status))
        if view.status.get("phase") != status["phase"] or \
                view.status.get("message") != message:
            kopf.event(view.reference(), type="Warning", reason=reason, message=message)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    kopf.on.delete(*ADAPTERS, id="unload", timeout=config.unload_timeout_s,
                   registry=registry)(unload_before_delete)
    kopf.index(*ADAPTERS, id="adapters_by_base", registry=registry)(adapters_by_base)
    kopf.on.event(*BASE_MODELS, id="base_model_gone", registry=registry)(on_base_model_gone)
