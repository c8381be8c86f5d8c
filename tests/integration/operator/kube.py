"""A small synchronous Kubernetes client for the tests' own reads and writes.

Its requests carry `User-Agent: loraplex-tests`, so the RBAC check can tell them from the
operator's own calls in the emulator's request log.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx

TEST_AGENT = "loraplex-tests"
PATHS = {
    "pods": "/api/v1",
    "events": "/api/v1",
    "configmaps": "/api/v1",
    "secrets": "/api/v1",
    "services": "/api/v1",
    "serviceaccounts": "/api/v1",
    "deployments": "/apis/apps/v1",
    "poddisruptionbudgets": "/apis/policy/v1",
    "roles": "/apis/rbac.authorization.k8s.io/v1",
    "rolebindings": "/apis/rbac.authorization.k8s.io/v1",
    "networkpolicies": "/apis/networking.k8s.io/v1",
    "basemodeldeployments": "/apis/loraplex.dev/v1alpha1",
    "adapters": "/apis/loraplex.dev/v1alpha1",
    "inferencepools": "/apis/inference.networking.k8s.io/v1",
}
T = TypeVar("T")


class KubeError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}: {response.text[:1000]}")
        self.status = response.status_code


class Kube:
    def __init__(self, url: str, namespace: str, timeout_s: float = 10.0) -> None:
        self.namespace = namespace
        self.http = httpx.Client(base_url=url, headers={"User-Agent": TEST_AGENT},
                                 timeout=timeout_s, trust_env=False)
        self._watching: list[socket.socket] = []

    def close(self) -> None:
        """Also ends the watches being read (in other threads): an open watch held the
        emulated API server's shutdown for its whole grace time."""
        for sock in self._watching:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.http.close()

    def _path(self, plural: str, name: str | None = None, sub: str | None = None) -> str:
        path = f"{PATHS[plural]}/namespaces/{self.namespace}/{plural}"
        return path + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    def _check(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise KubeError(response)
        return response.json()

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.http.post(self._path(plural), json=body))

    def get(self, plural: str, name: str, sub: str | None = None) -> dict[str, Any] | None:
        response = self.http.get(self._path(plural, name, sub))
        return None if response.status_code == 404 else self._check(response)

    def list(self, plural: str) -> list[dict[str, Any]]:
        return self._check(self.http.get(self._path(plural)))["items"]

    def watch(self, plural: str) -> Iterator[dict[str, Any]]:
        """Watch events (`{"type", "object"}`), the existing objects first as ADDED; no read
        timeout (a quiet stream is no failure). Ends when the client closes."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        with self.http.stream("GET", self._path(plural), params={"watch": "true"},
                              timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise KubeError(response)
            sock = response.extensions["network_stream"].get_extra_info("socket")
            self._watching.append(sock)
            try:
                for line in response.iter_lines():
                    if line.strip():
                        yield json.loads(line)
            finally:
                self._watching.remove(sock)

    def patch(self, plural: str, name: str, data: dict[str, Any],
              sub: str | None = None) -> dict[str, Any]:
        return self._check(self.http.patch(
            self._path(plural, name, sub), json=data,
            headers={"Content-Type": "application/merge-patch+json"}))

    def delete(self, plural: str, name: str) -> None:
        response = self.http.delete(self._path(plural, name))
        if response.status_code != 404:
            self._check(response)

    def collect_garbage(self) -> int:
        """Delete objects whose owner is gone (the garbage collector's job in a cluster)."""
        live = {obj["metadata"]["uid"] for plural in PATHS for obj in self.list(plural)}
        removed = 0
        for plural in PATHS:
            for obj in self.list(plural):
                owners = obj["metadata"].get("ownerReferences") or []
                if owners and not any(o["uid"] in live for o in owners):
                    self.delete(plural, obj["metadata"]["name"])
                    removed += 1
        return removed


def wait_for(check: Callable[[], T], timeout_s: float, what: str,
             interval_s: float = 0.2) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` and its last value."""
    deadline, value = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            value = check()
        except AssertionError as error:
            value = error
        else:
            if value:
                return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; "
                         f"last: {value!r}")
