"""Talking to a BMD's pods: observe what each holds, then carry out loads and unloads.

All pods are asked concurrently (bounded), so one slow pod delays a cycle by at most
the admin timeout. Unloads run before loads, freeing room on a pod before it fills.
`holdings` reduces an observation to what a reconcile cycle acts on, so a cheap poll of
the pods can tell whether a cycle is due (a pod dropped, loaded or failed an adapter).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.actions import Load, Unload
from loraplex.operator.admin import AdminClient, AdminError
from loraplex.operator.views import PodView

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PodObservation:
    pod: PodView
    adapters: Mapping[str, AdapterStatus] | None  # None: the admin API did not answer
    error: str | None = None


@dataclass
class ExecutionReport:
    refused: dict[tuple[str, str], str] = field(default_factory=dict)  # (adapter, pod) → why
    unreachable: dict[tuple[str, str], str] = field(default_factory=dict)
    loaded: dict[tuple[str, str], AdapterStatus] = field(default_factory=dict)  # PUT replies
    calls: int = 0


Holdings = dict[str, frozenset[tuple[str, str | None, str | None, str | None]] | None]


async def observe(admin: AdminClient, pods: Iterable[PodView], concurrency: int,
                  quiet: bool = False) -> dict[str, PodObservation]:
    """What each pod holds; `quiet`: a pod that does not answer is not logged (a poll)."""
    limit = asyncio.Semaphore(concurrency)

    async def one(pod: PodView) -> PodObservation:
        async with limit:
            try:
                return PodObservation(pod, await admin.list_adapters(pod.url))
            except AdminError as error:
                if not quiet:
                    logger.info("pod %s did not answer: %s", pod.name, error)
                return PodObservation(pod, None, str(error))

    results = await asyncio.gather(*(one(pod) for pod in pods))
    return {result.pod.name: result for result in results}


def holdings(observations: Mapping[str, PodObservation]) -> Holdings:
    """Pod → its adapters with their state, source and error (None: no answer); request
    counts left out, they change with traffic and are read at the autoscale interval."""
    return {name: None if obs.adapters is None else frozenset(
                (adapter, held.state, held.source, held.error)
                for adapter, held in obs.adapters.items())
            for name, obs in observations.items()}


async def execute(admin: AdminClient, pods: Mapping[str, PodView],
                  actions: Iterable[Load | Unload], concurrency: int) -> ExecutionReport:
    report = ExecutionReport()
    limit = asyncio.Semaphore(concurrency)
    actions = list(actions)

    async def run(action: Load | Unload) -> None:
        url = pods[action.pod].url
        key = (action.adapter, action.pod)
        async with limit:
            try:
                if isinstance(action, Unload):
                    report.calls += 1
                    await admin.unload(url, action.adapter)
                else:
                    report.calls += 1
                    reply = await admin.load(url, action.adapter, action.source,
                                             pinned=action.pinned, preload=action.preload,
                                             credentials=action.credentials)
                    if reply is not None:
                        report.loaded[key] = reply
            except AdminError as error:
                if error.refused:
                    report.refused[key] = str(error)
                else:
                    report.unreachable[key] = str(error)
                logger.info("%s %s on %s: %s", type(action).__name__.lower(), action.adapter,
                            action.pod, error)

    await asyncio.gather(*(run(a) for a in actions if isinstance(a, Unload)))
    await asyncio.gather(*(run(a) for a in actions if isinstance(a, Load)))
    return report
