"""Talking to a BMD's pods: observe what each holds, then carry out loads and unloads.

All pods are asked concurrently (bounded), so one slow pod delays a cycle by at most
the admin timeout. Unloads run before loads, freeing room on a pod before it fills.
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


async def observe(admin: AdminClient, pods: Iterable[PodView],
                  concurrency: int) -> dict[str, PodObservation]:
    limit = asyncio.Semaphore(concurrency)

    async def one(pod: PodView) -> PodObservation:
        async with limit:
            try:
                return PodObservation(pod, await admin.list_adapters(pod.url))
            except AdminError as error:
                logger.info("pod %s did not answer: %s", pod.name, error)
                return PodObservation(pod, None, str(error))

    results = await asyncio.gather(*(one(pod) for pod in pods))
    return {result.pod.name: result for result in results}


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
