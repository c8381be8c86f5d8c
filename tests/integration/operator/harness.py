"""The operator as a subprocess, and runtime pods as real `loraplex serve` servers.

A "pod" is a Pod object in the emulator (labels of the BMD's runtime Deployment, a Ready
condition, `status.podIP`) backed by a real runtime server on that address, port 8080,
started with exactly the flags of the Deployment the operator built.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplex.operator import naming
from tests.integration.operator.kube import Kube
from tests.integration.runtime_servers import RuntimeServer, start_runtime_server

POD_ADDRESS = "127.0.1.{}"  # 127.0.1.2, 127.0.1.3, ... (router tests use 127.0.2.x)
DROPPED_FLAGS = ("--host", "--port", "--cache-dir")
REPO = Path(__file__).resolve().parents[3]


class OperatorProcess:
    """`loraplex operator` against the emulator, through a kubeconfig file."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, *flags: str) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.flags = flags
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "loraplex.cli", "operator", "--namespace",
                   self.namespace, "--health-port", "0", *self.flags]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            env=env)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        code, self.process = self.process.wait(), None
        return code

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")
                         for path in sorted(self.log_dir.glob("operator-*.log")))


@contextlib.contextmanager
def running_operator(server: str, namespace: str, folder: Path,
                     *flags: str) -> Iterator[OperatorProcess]:
    """An operator subprocess against `server` while the block runs; its logs are printed
    at the end (pytest shows them when a test of the module failed)."""
    process = OperatorProcess(write_kubeconfig(folder / "kubeconfig", server, namespace),
                              namespace, folder, *flags)
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(process.logs()[-20000:])


def write_kubeconfig(path: Path, server: str, namespace: str) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: emulator, cluster: {{server: "{server}"}}}}]
users: [{{name: tester, user: {{token: test-token}}}}]
contexts: [{{name: emulator, context: {{cluster: emulator, user: tester, namespace: {namespace}}}}}]
current-context: emulator
""")
    return path


@dataclass
class Pod:
    name: str
    index: int
    server: RuntimeServer
    restarts: int = 0

    @property
    def ip(self) -> str:
        return self.server.host


class RuntimePods:
    """Runtime pods of one BMD: real servers plus the Pod objects that point at them."""

    def __init__(self, kube: Kube, bmd: str, log_dir: Path, cache_dir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.kube, self.bmd, self.log_dir, self.cache_dir = kube, bmd, log_dir, cache_dir
        self.env = dict(env or {})  # the container's environment (spec.env in a cluster)
        self.pods: dict[str, Pod] = {}
        self.next_index = 0

    def serve_args(self) -> list[str]:
        """The runtime container's args from the Deployment the operator created."""
        deployment = self.kube.get("deployments", naming.runtime_name(self.bmd))
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        kept, skip = [], False
        for arg in args:
            if skip:
                skip = False
            elif arg in DROPPED_FLAGS:
                skip = True
            else:
                kept.append(arg)
        return kept

    def token(self) -> str:
        import base64

        secret = self.kube.get("secrets", naming.admin_secret_name(self.bmd))
        return base64.b64decode(secret["data"][naming.ADMIN_TOKEN_KEY]).decode()

    def _start_server(self, index: int, wait: bool) -> RuntimeServer:
        host = POD_ADDRESS.format(index + 2)
        env = {**self.env, naming.ADMIN_TOKEN_ENV: self.token(),
               "LORAPLEX_CACHE": str(self.cache_dir)}
        return start_runtime_server(*self.serve_args(), host=host, port=naming.RUNTIME_PORT,
                                    env=env, log_dir=self.log_dir, wait=wait)

    def add(self, count: int, gap_s: float = 0.0) -> list[Pod]:
        """Start `count` servers in parallel, then publish them as Ready pods, `gap_s`
        seconds apart."""
        started = []
        try:
            for _ in range(count):
                index, self.next_index = self.next_index, self.next_index + 1
                started.append((index, self._start_server(index, wait=False)))
            for _, server in started:
                server.wait_ready()
        except BaseException:
            for _, server in started:
                server.stop()
            raise
        pods = []
        for index, server in started:
            if pods:
                time.sleep(gap_s)
            pod = Pod(f"{naming.runtime_name(self.bmd)}-{index}", index, server)
            self.kube.create("pods", self._body(pod))
            self.pods[pod.name] = pod
            pods.append(pod)
        return pods

    def restart(self, name: str) -> Pod:
        """The container restarts: same pod, same address, empty memory, restartCount+1."""
        pod = self.pods[name]
        pod.server.stop()
        pod.server = self._start_server(pod.index, wait=True)
        pod.restarts += 1
        self.kube.patch("pods", name, {"status": self._body(pod)["status"]}, sub="status")
        return pod

    def remove(self, name: str) -> None:
        pod = self.pods.pop(name)
        self.kube.delete("pods", name)
        pod.server.stop()

    def stop_all(self) -> None:
        for pod in self.pods.values():
            pod.server.stop()

    def _body(self, pod: Pod) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": self.kube.namespace,
                         "labels": naming.common_labels(self.bmd, naming.COMPONENT_RUNTIME)},
            "spec": {"containers": [{"name": "runtime", "image": "loraplex-runtime:test"}]},
            "status": {
                "phase": "Running",
                "podIP": pod.ip,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "runtime", "ready": True,
                                       "restartCount": pod.restarts}],
            },
        }
