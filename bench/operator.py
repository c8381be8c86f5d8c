"""Operator at scale: 1,000 Adapters onto 8 pods (or 10,000 onto 32), against the emulated
API server.

Measures the time from applying the Adapters until every one is `Ready` (the operator's
status, which it writes only after a pod confirmed the load, followed through a watch:
listing 10,000 Adapters every half second would measure the lists), the Kubernetes API
calls the operator made per adapter, the admin API calls per adapter, and where the CPU
went: the operator process, and the emulator's thread beside it (its time per API call
says what the emulator itself costs). Prints a table and writes JSON.

    python -m bench.operator                          # 1,000 adapters, 8 stub pods
    python -m bench.operator --adapters 10000 --pods 32
    python -m bench.operator --pod-kind real --adapters 200

Pods are either `stub` (minimal admin APIs, in a process of their own, that confirm
every load at once and count calls: they measure the operator alone, not adapter loading)
or `real` (`loraplex serve` tiny-llama servers with synthetic adapters: end to end,
slower). The Adapters are created from a few processes of their own (bench/operator_clients.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.operator_clients import Appliers, StubPods, process_cpu_s
from loraplex.operator import naming
from tests.integration.operator.emulator import EmulatorThread
from tests.integration.operator.harness import OperatorProcess, RuntimePods, write_kubeconfig
from tests.integration.operator.kube import TEST_AGENT, Kube

NAMESPACE, BMD = "bench", "bench"
APPLIERS = 4  # processes creating the Adapters


def pod_body(index: int, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{BMD}-runtime-{index}", "namespace": NAMESPACE,
                         "labels": naming.common_labels(BMD, naming.COMPONENT_RUNTIME)},
            "spec": {"containers": [{"name": "runtime", "image": "stub"}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{"name": "runtime", "restartCount": 0}]}}


class ReadyWatch:
    """Follows the Adapters' phases through one watch stream, in a thread."""

    def __init__(self, url: str) -> None:
        self.kube = Kube(url, NAMESPACE)
        self.phases: dict[str, str | None] = {}
        self.changed = threading.Condition()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self.kube.watch("adapters"):
                adapter = event["object"]
                with self.changed:
                    self.phases[adapter["metadata"]["name"]] = \
                        (adapter.get("status") or {}).get("phase")
                    self.changed.notify_all()
        except Exception:  # the client closed: the benchmark is over
            return

    def wait_ready(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while (ready := sum(p == "Ready" for p in self.phases.values())) < count:
                if not self.changed.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"only {ready}/{count} Ready after {timeout_s} s")

    def ready(self) -> int:
        with self.changed:
            return sum(p == "Ready" for p in self.phases.values())

    def close(self) -> None:
        self.kube.close()


class Timeline(threading.Thread):
    """Once a second: Adapters Ready, and the CPU seconds the operator and the emulator have
    used (where a run waited, and on whom)."""

    def __init__(self, watch: ReadyWatch, operator_pid: int, emulator: EmulatorThread
                 ) -> None:
        super().__init__(daemon=True)
        self.watch, self.operator_pid, self.emulator = watch, operator_pid, emulator
        self.samples: list[dict[str, float]] = []
        self.finished = threading.Event()
        self.started_at = time.monotonic()
        self.cpu_before = (process_cpu_s(operator_pid), emulator.cpu_s())

    def run(self) -> None:
        while not self.finished.wait(1.0):
            self.samples.append({
                "s": round(time.monotonic() - self.started_at, 1),
                "ready": self.watch.ready(),
                "operator_cpu_s": round(process_cpu_s(self.operator_pid) - self.cpu_before[0], 2),
                "emulator_cpu_s": round(self.emulator.cpu_s() - self.cpu_before[1], 2)})


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    emulator = EmulatorThread().start()
    kube = Kube(emulator.url, NAMESPACE, timeout_s=60.0)
    operator = OperatorProcess(write_kubeconfig(work / "kubeconfig", emulator.url, NAMESPACE),
                               NAMESPACE, work, "--resync-interval-s", str(args.resync),
                               "--loading-poll-s", "0.5", "--log-level", "warning")
    stubs = real = None
    appliers = Appliers(emulator.url, NAMESPACE, APPLIERS)
    try:
        operator.start()
        kube.create("basemodeldeployments", {
            "apiVersion": naming.API_VERSION, "kind": naming.BMD_KIND,
            "metadata": {"name": BMD, "namespace": NAMESPACE},
            "spec": {"model": {"source": "tiny-llama", "loadFormat": "dummy"},
                     "image": "bench", "replicas": args.pods,
                     "capacity": {"deviceSlots": 32, "hostBytes": "64Gi", "maxRank": 64}}})
        while kube.get("secrets", naming.admin_secret_name(BMD)) is None:
            time.sleep(0.2)
        if args.pod_kind == "stub":
            stubs = StubPods(args.pods).start()
            for index, url in enumerate(stubs.urls()):
                kube.create("pods", pod_body(index, url.split("//")[1].split(":")[0]))
            sources = ["/adapters/bench"] * args.adapters
        else:
            from loraplex.runtime.adapters.synthetic import write_random_adapter
            from loraplex.runtime.adapters.target import LoraTargetShapes
            from loraplex.runtime.models.shapes import shape_config

            target = LoraTargetShapes.from_hf_config(shape_config("tiny-llama"))
            folders = [write_random_adapter(work / f"a{r}", target, rank=r) for r in (4, 8, 16)]
            sources = [str(folders[i % 3]) for i in range(args.adapters)]
            real = RuntimePods(kube, BMD, work, work / "cache")
            real.add(args.pods)
        appliers.start()
        time.sleep(args.resync)  # the pods are known and idle before the clock starts
        watch = ReadyWatch(emulator.url)
        before, operator_cpu_before = len(emulator.calls()), process_cpu_s(operator.process.pid)
        emulator_cpu_before = emulator.cpu_s()
        started = time.monotonic()
        timeline = Timeline(watch, operator.process.pid, emulator)
        timeline.start()
        bodies = [{"apiVersion": naming.API_VERSION, "kind": naming.ADAPTER_KIND,
                   "metadata": {"name": f"a-{index:05d}", "namespace": NAMESPACE},
                   "spec": {"baseModel": BMD, "source": source, "replicas": args.replicas}}
                  for index, source in enumerate(sources)]
        appliers.create_all(bodies)  # as `kubectl apply` from a few shells
        applied = time.monotonic() - started
        try:
            watch.wait_ready(args.adapters, args.timeout)
        finally:
            watch.close()
        elapsed = time.monotonic() - started
        timeline.finished.set()
        operator_cpu = process_cpu_s(operator.process.pid) - operator_cpu_before
        emulator_cpu = emulator.cpu_s() - emulator_cpu_before
        served = emulator.calls()[before:]
        calls = Counter()
        for call in served:
            if call.user_agent != TEST_AGENT and call.plural:
                sub = f"/{call.subresource}" if call.subresource else ""
                calls[f"{call.action} {call.plural}{sub}"] += 1
        return {
            "adapters": args.adapters, "pods": args.pods, "replicas": args.replicas,
            "pod_kind": args.pod_kind, "resync_s": args.resync,
            "apply_s": round(applied, 2), "all_ready_s": round(elapsed, 2),
            # CPU used from the first apply until all were Ready: on a shared machine this
            # moves far less than the wall-clock time. The emulator serves every call, the
            # benchmark's own creates and watch included.
            "operator_cpu_s": round(operator_cpu, 2),
            "operator_cpu_ms_per_adapter": round(1000 * operator_cpu / args.adapters, 2),
            "emulator_cpu_s": round(emulator_cpu, 2),
            "emulator_calls": len(served),
            "emulator_cpu_ms_per_call": round(1000 * emulator_cpu / max(1, len(served)), 3),
            "stub_pods_cpu_s": round(stubs.cpu_s(), 2) if stubs else None,
            "k8s_calls": sum(calls.values()),
            "k8s_calls_per_adapter": round(sum(calls.values()) / args.adapters, 2),
            "k8s_calls_by_kind": dict(calls.most_common()),
            "admin_calls": stubs.calls() if stubs else None,
            "admin_calls_per_adapter": (round(sum(stubs.calls().values()) / args.adapters, 2)
                                        if stubs else None),
            "timeline": timeline.samples,
            "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "python": platform.python_version(),
        }
    finally:
        operator.stop()
        appliers.stop()
        if stubs:
            stubs.stop()
        if real:
            real.stop_all()
        kube.close()
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--pod-kind", choices=("stub", "real"), default="stub")
    parser.add_argument("--resync", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--output", default="bench/results/operator.json")
    result = run(parser.parse_args())
    print(f"{'adapters':>9} {'pods':>5} {'kind':>5} {'apply s':>8} {'all Ready s':>12} "
          f"{'operator CPU s':>15} {'emulator CPU s':>15} {'k8s calls/adapter':>18} "
          f"{'admin calls/adapter':>20}")
    print(f"{result['adapters']:>9} {result['pods']:>5} {result['pod_kind']:>5} "
          f"{result['apply_s']:>8} {result['all_ready_s']:>12} {result['operator_cpu_s']:>15} "
          f"{result['emulator_cpu_s']:>15} {result['k8s_calls_per_adapter']:>18} "
          f"{result['admin_calls_per_adapter']!s:>20}")
    print(f"operator {result['operator_cpu_ms_per_adapter']} ms CPU per adapter; emulator "
          f"{result['emulator_cpu_ms_per_call']} ms CPU per call over "
          f"{result['emulator_calls']} calls")
    for kind, count in result["k8s_calls_by_kind"].items():
        print(f"  {kind:<40} {count}")
    print("load average at the end (1, 5, 15 min):", result["load_average_1_5_15"])
    print("s, Ready, operator CPU s, emulator CPU s:", "; ".join(
        f"{t['s']:.0f} {t['ready']} {t['operator_cpu_s']:.0f} {t['emulator_cpu_s']:.0f}"
        for t in result["timeline"][4::5]))
    output = Path(result_path := parser.parse_args().output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {result_path}")


if __name__ == "__main__":
    main()
