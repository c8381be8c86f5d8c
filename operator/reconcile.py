"""One reconcile cycle of a BaseModelDeployment: the single writer of its placements.

Level-based and idempotent: each cycle reads the whole state (the BMD, its ready pods,
its Adapters, and what every pod reports on `GET /v1/adapters`), computes placement,
pushes the difference, then writes the placement ConfigMap and every status that
changed. Nothing depends on which event woke it up, so a missed event, a restarted pod
or a restarted operator all heal on the next cycle. `spec` is never written. Loads of
adapters with a `credentialsSecretRef` carry the Secret's credentials (credentials.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from loraplex.operator import naming
from loraplex.operator.actions import Load, Unload, canonical_source, plan_actions
from loraplex.operator.autoscale import Autoscaler, Decision
from loraplex.operator.builders import Owner
from loraplex.operator.children import ChildObjects
from loraplex.operator.cluster import Cluster
from loraplex.operator.conditions import merge_patch_for, now_iso
from loraplex.operator.config import OperatorConfig
from loraplex.operator.credentials import SecretCache, attach_credentials, changed_secrets
from loraplex.operator.decisions import DecisionLog
from loraplex.operator.models import BaseModelDeploymentSpec, SpecError, parse_spec
from loraplex.operator.moves import MovesInFlight
from loraplex.operator.placement import AdapterDemand, PlacementPlan, PodCapacity, place
from loraplex.operator.placement_writer import PlacementTableWriter
from loraplex.operator.pod_health import PodHealth
from loraplex.operator.rebalance import rebalance
from loraplex.operator.status import (
    INVALID_SPEC,
    PlacementReport,
    adapter_status,
    bmd_status,
    pending_status,
)
from loraplex.operator.status_writes import AdapterStatusWriter, EventSink
from loraplex.operator.sync import (
    ExecutionReport,
    Holdings,
    execute,
    holdings,
    observe,
)
from loraplex.operator.views import AdapterView, PodView

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class CycleOutcome:
    busy: bool  # loads in flight or just pushed: check again soon
    admin_calls: int
    autoscaling: bool = False  # some adapter's replicas follow its load: keep watching it


class BaseModelReconciler:
    """Memory that survives between cycles of one BMD (all of it can be rebuilt)."""

    def __init__(self, owner: Owner, cluster: Cluster, config: OperatorConfig,
                 events: EventSink) -> None:
        self.owner, self.cluster, self.config = owner, cluster, config
        self.children = ChildObjects(owner, cluster, config)
        self.assigned: dict[str, tuple[str, ...]] = {}  # last plan: adapter → pods
        self.refused: dict[tuple[str, str], tuple[int | None, str]] = {}
        self.health = PodHealth(config.pod_grace_s)
        self.tables = PlacementTableWriter(owner, cluster)
        self.unloaded: set[str] = set()  # deleting adapters no reachable pod holds
        self.secret_versions: dict[str, str] = {}  # adapter → its Secret's version last pushed
        self.moves = MovesInFlight()
        self.autoscaler = Autoscaler()
        self.autoscaled: dict[str, Decision] = {}  # this cycle's autoscale decisions
        self.pod_count = 0  # runtime pods that exist, ready or not (status.replicas)
        self.decisions = DecisionLog()
        self.statuses = AdapterStatusWriter(cluster, events)
        self.seen: Holdings = {}  # what the pods held at the last cycle

    async def pods_changed(self, pods: Iterable[PodView]) -> bool:
        """Whether the pods hold something else than at the last cycle (a poll between
        cycles: one `GET /v1/adapters` per ready pod)."""
        if self.children.admin is None:
            return False
        ready = [pod for pod in pods if pod.ready]
        observations = await observe(self.children.admin, ready,
                                     self.config.admin_concurrency, quiet=True)
        return holdings(observations) != self.seen

    async def aclose(self) -> None:
        await self.children.aclose()

    async def cycle(self, body: Mapping[str, Any], pods: Iterable[PodView],
                    adapters: Iterable[AdapterView]) -> CycleOutcome:
        now = now_iso()
        generation = body.get("metadata", {}).get("generation")
        pods = list(pods)
        self.pod_count = len(pods)
        try:
            spec = parse_spec(BaseModelDeploymentSpec, body.get("spec"), naming.BMD_KIND)
        except SpecError as error:
            await self._write_bmd_status(body, spec=None, ready_pods=0, phases=[], placed=0,
                                         problem=str(error), now=now)
            return CycleOutcome(busy=False, admin_calls=0)
        rejected = await self.children.ensure(spec, generation)
        admin = await self.children.admin_client()

        ready = sorted((pod for pod in pods if pod.ready), key=lambda pod: pod.name)
        restarted = set(self.health.restarted(ready))  # their refused loads get a new try
        self.refused = {k: v for k, v in self.refused.items() if k[1] not in restarted}
        observations = await observe(admin, ready, self.config.admin_concurrency)
        self.seen = holdings(observations)
        reports = {name: dict(obs.adapters) for name, obs in observations.items()
                   if obs.adapters is not None}
        silent = self.health.silent_within_grace(observations)
        views = {view.name: view for view in adapters}
        self.unloaded = {name for name, view in views.items() if view.deleting
                         and not any(name in held for held in reports.values())}

        plan, capacities, demands = self._plan(spec, reports, views, silent)
        actions, withheld = await self._actions(plan, reports, views)
        if not actions and spec.placement.strategy == "Spread" and not self.moves:
            moves = rebalance(capacities, demands, plan.placements,
                              max_moves=self.config.rebalance_max_moves,
                              threshold=self.config.rebalance_threshold,
                              fixed=self._unsettled(plan, reports, withheld))
            if moves:
                plan = PlacementPlan(self.moves.start(moves, plan.placements),
                                     plan.shortfalls)
                actions, withheld = await self._actions(plan, reports, views)
        self.decisions.placements(self.assigned, plan.placements, reports, self.moves.pairs())
        urls = {name: observations[name].pod.url for name in reports}
        if any(isinstance(action, Unload) for action in actions):  # routes leave first
            await self.tables.write(plan, reports, views, urls)
        executed = await execute(admin, {p.name: p for p in ready}, actions,
                                 self.config.admin_concurrency)
        for action in actions:
            key = (action.adapter, action.pod)
            if key in executed.refused:
                self.refused[key] = (views[action.adapter].generation, executed.refused[key])
            elif key not in executed.unreachable:
                self.refused.pop(key, None)
        self.assigned = dict(plan.placements)
        for (adapter, pod), reply in executed.loaded.items():  # the PUT answer is news too
            reports[pod][adapter] = reply
        self.decisions.loads(plan.placements, reports)

        await self.tables.write(plan, reports, views, urls)
        phases = await self._write_adapter_statuses(plan, reports, views, executed, withheld,
                                                    now)
        placed = sum(bool(pods) for pods in plan.placements.values())
        await self._write_bmd_status(body, spec=spec, ready_pods=len(ready), phases=phases,
                                     placed=placed, problem=None, now=now, rejected=rejected)
        busy = bool(actions) or any(phase == "Loading" for phase in phases)
        return CycleOutcome(busy=busy, admin_calls=len(observations) + executed.calls,
                            autoscaling=bool(self.autoscaled))

    async def _actions(self, plan: PlacementPlan, reports: Mapping[str, Mapping[str, Any]],
                       views: Mapping[str, AdapterView]
                       ) -> tuple[list[Load | Unload], dict[str, str]]:
        """Loads and unloads to push, loads carrying their adapter's credentials, and the
        adapters held back for want of them (adapter → why)."""
        secrets = SecretCache(self.cluster.get_secret)
        retry = await changed_secrets(self._failing(plan, reports), views,
                                      self.secret_versions, secrets)
        refused = {key: generation for key, (generation, _) in self.refused.items()
                   if key[0] not in retry}
        actions = plan_actions(plan.placements, reports, views, refused, retry)
        actions, withheld, versions = await attach_credentials(actions, views, secrets)
        self.secret_versions = {name: version for name, version
                                in {**self.secret_versions, **versions}.items()
                                if name in views}
        return actions, withheld

    def _failing(self, plan: PlacementPlan,
                 reports: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """Adapters that a planned pod refused or reports failed."""
        return {name for name, pods in plan.placements.items() for pod in pods
                if (name, pod) in self.refused
                or ((held := reports.get(pod, {}).get(name)) is not None and held.failed)}

    def _remembered(self, name: str, view: AdapterView) -> tuple[str, ...]:
        """Where the adapter was placed: the last plan, or after a restart its status."""
        if name in self.assigned:
            return self.assigned[name]
        return tuple(p.get("pod") for p in view.status.get("placements") or [])

    def _unsettled(self, plan: PlacementPlan, reports: Mapping[str, Mapping[str, Any]],
                   withheld: Mapping[str, str]) -> set[str]:
        """Adapters not to move now: any copy of theirs not confirmed loaded."""
        return {name for name, pods in plan.placements.items() if name in withheld or any(
            (held := reports.get(pod, {}).get(name)) is None or not held.loaded
            for pod in pods)}

    def _plan(self, spec: BaseModelDeploymentSpec,
              reports: Mapping[str, Mapping[str, Any]],
              views: Mapping[str, AdapterView], silent: set[str]
              ) -> tuple[PlacementPlan, list[PodCapacity], list[AdapterDemand]]:
        """The plan, with the pods and demands it was made from (for rebalancing: the
        demands without the extra replica of a move in flight, and without the copies
        held for silent pods)."""
        capacity = spec.capacity
        pods = []
        for pod_name, held in reports.items():
            foreign = [entry for name, entry in held.items() if name not in views]
            pods.append(PodCapacity(
                name=pod_name, host_bytes=capacity.host_bytes_int,
                device_slots=capacity.device_slots, max_rank=capacity.max_rank,
                reserved_bytes=sum(e.size_bytes or self.config.default_adapter_bytes
                                   for e in foreign),
                reserved_slots=sum(bool(e.pinned) for e in foreign)))
        sources = {name: canonical_source(view.spec.source) for name, view in views.items()
                   if view.spec is not None and not view.deleting}
        dropped = self.moves.review(reports, self.refused, sources, sources)
        self.autoscaled = self.autoscaler.replicas(views, reports, time.monotonic())
        holders_of: dict[str, list[str]] = {}  # adapter → pods that report it (one pass)
        for pod, held in sorted(reports.items()):
            for name in held:
                holders_of.setdefault(name, []).append(pod)
        demands, current, held_back = [], {}, {}
        for name in sources:
            view = views[name]
            holders = holders_of.get(name, [])
            seen = [reports[pod][name] for pod in holders]
            size = next((e.size_bytes for e in seen if e.size_bytes), None) \
                or view.status.get("sizeBytes") or self.config.default_adapter_bytes
            rank = next((e.rank for e in seen if e.rank), None) or view.status.get("rank")
            remembered = self._remembered(name, view)
            held_back[name] = tuple(pod for pod in remembered if pod in silent)
            count = self.autoscaled[name].replicas if name in self.autoscaled \
                else view.spec.replicas
            replicas = max(0, count - len(held_back[name]))
            demands.append(AdapterDemand(name, replicas, int(size), rank, view.spec.pinned))
            # the last plan first, so a copy being unloaded is not kept instead
            current[name] = [pod for pod in self.moves.order(name, [*remembered, *holders])
                             if (name, pod) not in dropped]
        wanted = [replace(d, replicas=d.replicas + self.moves.wanted_extra(d.name))
                  for d in demands]
        plan = place(pods, wanted, current, spec.placement.strategy)
        plan = PlacementPlan(
            placements={name: tuple(sorted(pods + held_back[name]))
                        for name, pods in plan.placements.items()},
            shortfalls=plan.shortfalls)
        return plan, pods, demands

    async def _write_adapter_statuses(self, plan: PlacementPlan,
                                      reports: Mapping[str, Mapping[str, Any]],
                                      views: Mapping[str, AdapterView],
                                      executed: ExecutionReport, withheld: Mapping[str, str],
                                      now: str) -> list[str]:
        """`withheld`: adapters not pushed for want of credentials (adapter → why); pods
        that do not hold them are left out of their placements."""
        phases, changes = [], []
        self.statuses.forget(set(views))
        for name, indexed in sorted(views.items()):
            if indexed.deleting:
                continue
            view = self.statuses.latest(indexed)
            if view.spec is None:
                status = pending_status(view, INVALID_SPEC, view.spec_error or "", now)
            else:
                placement_reports = []
                for pod in plan.placements[name]:
                    held = reports.get(pod, {}).get(name)
                    if held is None and name in withheld:
                        continue
                    generation, refusal = self.refused.get((name, pod), (None, None))
                    placement_reports.append(PlacementReport(
                        pod, held, refusal if generation == view.generation else None,
                        executed.unreachable.get((name, pod)) or self.health.silence(pod)))
                scaled = self.autoscaled.get(name)
                status = adapter_status(view, placement_reports,
                                        plan.shortfalls.get(name), now, withheld.get(name),
                                        scaled and scaled.replicas, scaled and scaled.in_flight)
            phases.append(status["phase"])
            if status != view.status:
                changes.append((indexed, view, status))
        await self.statuses.write(changes)
        return phases

    async def _write_bmd_status(self, body: Mapping[str, Any], *,
                                spec: BaseModelDeploymentSpec | None, ready_pods: int,
                                phases: list[str], placed: int, problem: str | None,
                                now: str, rejected: str | None = None) -> None:
        previous = body.get("status") or {}
        status = bmd_status(
            previous, replicas=spec.replicas if spec else 0, ready_pods=ready_pods,
            adapter_phases=phases, placed=placed,
            endpoint=naming.endpoint_url(self.owner.name, self.owner.namespace),
            generation=body.get("metadata", {}).get("generation"), problem=problem, now=now,
            rejected=rejected, pods=self.pod_count,
            selector=naming.runtime_selector(self.owner.name))
        if status != previous:
            await self.cluster.patch_bmd_status(self.owner.namespace, self.owner.name,
                                                merge_patch_for(previous, status))
