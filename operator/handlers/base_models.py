"""One long-lived reconcile loop (a kopf daemon) per BaseModelDeployment.

The loop is the single writer of its BMD's placements, so Adapter handlers never race
it. It runs a cycle, then waits until woken by an index event, for the resync interval
(the loading poll while loads are in flight), or until a poll of the pods' adapter lists
(every loading poll) finds them changed: a pod that drops an adapter by itself sends no
Kubernetes event, and its Adapter's status must not say Ready there until the resync.
Errors are logged and retried: the loop only stops when kopf stops it (BMD deleted,
operator exiting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from loraplex.operator.builders import Owner
from loraplex.operator.config import OperatorConfig
from loraplex.operator.handlers.indexes import BASE_MODELS
from loraplex.operator.reconcile import BaseModelReconciler
from loraplex.operator.views import PodView

DEBOUNCE_S = 0.05  # let a burst of events (20 Adapters applied at once) land first
# A cycle reads all of its BMD's Adapters, so its cost grows with them (about a second of
# CPU at 10,000). Woken again at once, cycles ran back to back and took most of the
# operator's time while Adapters were being applied, placing a few each and leaving kopf
# little to index the new ones with. After a wake-up the loop waits as long as its last
# cycle took (at most MAX_PAUSE_S): the cycles take at most about half the time, and a
# burst is placed in fewer, larger cycles.
MAX_PAUSE_S = 2.0


def post_event(ref: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(ref), type=type_, reason=reason, message=message)


async def _sleep(wakeup: asyncio.Event, stopped: kopf.DaemonStopped, delay: float) -> bool:
    """Wait for a wake-up, the daemon's stop, or `delay`; True when woken up."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = {asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(until_stopped())}
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return wakeup.is_set() and not stopped


async def _wait(reconciler: BaseModelReconciler, pods: Callable[[], list[PodView]],
                wakeup: asyncio.Event, stopped: kopf.DaemonStopped, delay: float,
                poll_s: float) -> bool:
    """Wait up to `delay`, polling the pods every `poll_s`; True when an event woke it."""
    deadline = time.monotonic() + delay
    while (left := deadline - time.monotonic()) > 0 and not stopped:
        if await _sleep(wakeup, stopped, min(left, poll_s)):
            return True
        if left > poll_s and not stopped and await reconciler.pods_changed(pods()):
            return False
    return False


async def reconcile_base_model(name: str, namespace: str, body: kopf.Body,
                               stopped: kopf.DaemonStopped, memo: kopf.Memo,
                               runtime_pods: kopf.Index, adapters_by_base: kopf.Index,
                               logger: logging.Logger, **_: Any) -> None:
    state, key = memo.state, (namespace, name)
    config: OperatorConfig = state.config
    wakeup = state.wakeup(key)
    reconciler: BaseModelReconciler | None = None
    try:
        while not stopped:
            wakeup.clear()
            delay = config.resync_interval_s
            started = time.monotonic()
            try:
                if reconciler is None:
                    reconciler = BaseModelReconciler(Owner.from_body(body), state.cluster,
                                                     config, post_event)
                    state.reconcilers[key] = reconciler
                outcome = await reconciler.cycle(body, list(runtime_pods.get(key, [])),
                                                 list(adapters_by_base.get(key, [])))
                if outcome.busy:
                    delay = config.loading_poll_s
                elif outcome.autoscaling:
                    delay = min(delay, config.autoscale_interval_s)
            except Exception:
                logger.exception("reconcile of %s/%s failed; retrying", namespace, name)
                delay = min(config.resync_interval_s, 5.0)
            took = time.monotonic() - started
            if reconciler is None or delay <= config.loading_poll_s:
                woken = await _sleep(wakeup, stopped, delay)
            else:
                woken = await _wait(reconciler, lambda: list(runtime_pods.get(key, [])),
                                    wakeup, stopped, delay, config.loading_poll_s)
            if woken:
                await asyncio.sleep(min(max(DEBOUNCE_S, took), MAX_PAUSE_S))
    finally:
        if state.reconcilers.get(key) is reconciler:
            state.reconcilers.pop(key, None)
        if reconciler is not None:
            await reconciler.aclose()


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    kopf.daemon(*BASE_MODELS, id="reconcile", cancellation_timeout=2.0,
                registry=registry)(reconcile_base_model)
