"""kmock's KubernetesEmulator, filling the gaps a real API server would not leave.

The emulator keeps objects and serves list/watch/patch/delete with finalizers, but does
not assign uid/resourceVersion/generation/creationTimestamp, resolve `generateName`,
validate objects, reject a stale JSON-patch `test`, serve a custom resource's `scale`
subresource, or collect garbage. kopf needs the
first ones (optimistic concurrency on finalizers), the operator's status needs
generation, and the tests need schema validation (custom resources against `crds/` with
jsonschema, Deployments against Kubernetes' own OpenAPI schema with kubernetes-validate:
a user's volume can make the operator's Deployment invalid) and an explicit garbage
collection by ownerReferences. Runs in its own thread and event loop
so the operator (a subprocess) and the synchronous tests can both talk to it over HTTP.

kmock matches each request against every past request (its DSL views iterate the
request log), which is quadratic: thousands of objects would take minutes. So the log
is trimmed to the requests in flight, and each call is recorded as a small `Call`
instead (what the RBAC check needs). kmock also finds the object of a get, patch, create
or delete by scanning every stored object (10,000 Adapters: about 10 ms a call, the
emulator's whole time); here the object is looked up by its key. A CRD can be taken
away for a while (`uninstall`), as in a cluster that lacks one.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import kubernetes_validate
import yaml
from kmock._internal import dicts

CRD_DIR = Path(__file__).resolve().parents[3] / "crds"
# Other projects' CRDs a cluster may have: the Gateway API Inference Extension's InferencePool.
FOREIGN_CRDS = [Path(__file__).resolve().parents[2] / "data/gateway-api-inference-extension"
                / "inferencepools.yaml"]

# (group/version/plural, kind, subresources): what discovery lists. kopf waits for
# namespaces and CRDs to be discoverable (as in every cluster) even when it does not scan
# them; lightkube does no discovery.
CLUSTER_RESOURCES = [
    ("v1/namespaces", "Namespace"),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
]
RESOURCES = [
    ("v1/pods", "Pod", ()),
    ("v1/events", "Event", ()),
    ("v1/configmaps", "ConfigMap", ()),
    ("v1/secrets", "Secret", ()),
    ("v1/services", "Service", ()),
    ("v1/serviceaccounts", "ServiceAccount", ()),
    ("apps/v1/deployments", "Deployment", ("status",)),
    ("policy/v1/poddisruptionbudgets", "PodDisruptionBudget", ("status",)),
    ("rbac.authorization.k8s.io/v1/roles", "Role", ()),
    ("rbac.authorization.k8s.io/v1/rolebindings", "RoleBinding", ()),
    ("networking.k8s.io/v1/networkpolicies", "NetworkPolicy", ()),
    ("events.k8s.io/v1/events", "Event", ()),
]
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}
BUILTIN_VALIDATED = {"deployments"}  # built-in kinds checked against Kubernetes' schema
K8S_VERSION = kubernetes_validate.latest_version()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Call:
    user_agent: str
    action: str  # list, watch, fetch, create, update, delete
    group: str
    plural: str
    subresource: str | None


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    calls: list[Call] = attrs.field(factory=list, init=False)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _validators: dict[str, jsonschema.Draft4Validator] = attrs.field(factory=dict, init=False)
    _scales: dict[str, dict[str, str]] = attrs.field(factory=dict, init=False)  # plural → paths
    _uninstalled: set[str] = attrs.field(factory=set, init=False)  # plurals of removed CRDs

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind in CLUSTER_RESOURCES:
            self.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=VERBS)
        for key, kind, subresources in RESOURCES:
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=True, verbs=VERBS, subresources=set(subresources))
        for path in [*sorted(CRD_DIR.glob("*.yaml")), *FOREIGN_CRDS]:
            crd = yaml.safe_load(path.read_text())
            names, version = crd["spec"]["names"], crd["spec"]["versions"][0]
            key = f"{crd['spec']['group']}/{version['name']}/{names['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=names["kind"], singular=names["singular"], namespaced=True, verbs=VERBS,
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version["subresources"]))
            self._validators[names["plural"]] = jsonschema.Draft4Validator(
                version["schema"]["openAPIV3Schema"])
            if "scale" in version["subresources"]:
                self._scales[names["plural"]] = version["subresources"]["scale"]

    def uninstall(self, plural: str) -> None:
        """As after `kubectl delete crd`: the kind is no longer served (404 on every call)."""
        self._uninstalled.add(plural)

    def install(self, plural: str) -> None:
        self._uninstalled.discard(plural)

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.action is not None:
            self.calls.append(Call(request.headers.get("User-Agent", ""),
                                   request.action.name.lower(), request.resource.group,
                                   request.resource.plural, request.subresource))
            if request.resource.plural in self._uninstalled:
                raise kmock.KubernetesError(status=404, reason="NotFound", message=(
                    "the server could not find the requested resource"))
        try:
            if request.subresource == "scale" and request.action == kmock.action.FETCH:
                return aiohttp.web.json_response(self._scale(request))
            if request.resource is not None and request.data is not None:
                if request.action == kmock.action.CREATE:
                    self._on_create(request)
                elif request.action == kmock.action.UPDATE:
                    self._on_patch(request)
            return await super()._handle(request)
        finally:
            self._dispatched(request)

    def _dispatched(self, request: kmock.Request) -> None:
        """Take `request` out of the log: its reaction is running, no dispatch needs it."""
        self._requests[:] = [r for r in self._requests if r is not request]

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        """As the API server: `Content-Type: application/json`, no charset (lightkube checks)."""
        response = await super()._render_error(exc)
        return aiohttp.web.Response(body=response.body, status=response.status,
                                    headers={"Content-Type": "application/json"})

    # kmock's own answers, each taking its request out of the log; get/patch/create/delete
    # look the object up by key

    def _stored(self, request: kmock.Request, namespace: str | None, name: str | None) -> Any:
        self._dispatched(request)
        key = (request.resource, namespace, name)
        if key not in self.objects or self.objects[key].empty:
            raise kmock.KubernetesError(status=404, reason="NotFound", message="not found")
        return self.objects[key]

    async def _serve_list(self, request: kmock.Request) -> Any:
        self._dispatched(request)
        return await super()._serve_list(request)

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        self._dispatched(request)
        async for event in super()._serve_watch(request):
            yield event

    async def _serve_fetch(self, request: kmock.Request) -> dict[str, Any]:
        obj = self._stored(request, request.namespace, request.name)
        if obj.deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message="not found")
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> dict[str, Any]:
        meta = request.data.get("metadata", {})
        return self._stored(request, request.namespace or meta.get("namespace"),
                            request.name or meta.get("name")).raw

    async def _serve_update(self, request: kmock.Request) -> dict[str, Any]:
        return self._stored(request, request.namespace, request.name).last.raw

    async def _serve_delete(self, request: kmock.Request) -> dict[str, Any]:
        return self._stored(request, request.namespace, request.name).last.raw

    def _scale(self, request: kmock.Request) -> dict[str, Any]:
        """GET .../scale of a custom resource: an autoscaling/v1 Scale read through the
        CRD's scale paths, as the API server answers `kubectl scale` and autoscalers."""
        key = (request.resource, request.namespace, request.name)
        paths = self._scales.get(request.resource.plural)
        if paths is None or key not in self.objects or self.objects[key].deleted:
            raise kmock.KubernetesError(status=404, reason="NotFound", message="no scale")
        body = dict(self.objects[key].last.raw)

        def read(path: str) -> Any:
            return _pointer(body, "/" + path.lstrip(".").replace(".", "/"))

        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {key: body["metadata"].get(key) for key in
                             ("name", "namespace", "uid", "resourceVersion")},
                "spec": {"replicas": read(paths["specReplicasPath"])},
                "status": {"replicas": read(paths["statusReplicasPath"]) or 0,
                           "selector": read(paths.get("labelSelectorPath", "")) or ""}}

    def _on_create(self, request: kmock.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
        meta.setdefault("namespace", request.namespace)
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)),
                    generation=1, creationTimestamp=_now())
        self._validate(request.resource.plural, request.data)

    def _on_patch(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # the emulator answers 404
        current = dict(self.objects[key].last.raw)
        version = str(next(self._versions))
        data = request.data
        if isinstance(data, list):  # JSON patch: honour `test`, as the API server does
            for op in data:
                if op.get("op") == "test" and _pointer(current, op["path"]) != op.get("value"):
                    raise kmock.KubernetesError(status=422, reason="Invalid",
                                                message=f"test failed at {op['path']}")
            touches_spec = any(op.get("path", "").startswith("/spec") for op in data)
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            merged = dicts.patch_dict(current, data[:-1])
        else:
            touches_spec = request.subresource in (None, "scale") and "spec" in data
            data.setdefault("metadata", {})["resourceVersion"] = version
            merged = dicts.patch_dict(current, data)
        if touches_spec and request.subresource in (None, "scale"):
            if merged.get("spec") != current.get("spec"):
                generation = int(current.get("metadata", {}).get("generation") or 0) + 1
                if isinstance(data, list):
                    data.append({"op": "add", "path": "/metadata/generation",
                                 "value": generation})
                else:
                    data["metadata"]["generation"] = generation
            self._validate(request.resource.plural, merged)

    def _validate(self, plural: str, body: dict[str, Any]) -> None:
        if plural in BUILTIN_VALIDATED:
            try:
                kubernetes_validate.validate(body, K8S_VERSION, strict=False)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(map(str, error.path))
                raise kmock.KubernetesError(status=422, reason="Invalid",
                                            message=f"{path}: {error.message}") from None
            return
        validator = self._validators.get(plural)
        if validator is None:
            return
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            problems = "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                                 for e in errors)
            raise kmock.KubernetesError(status=422, reason="Invalid", message=problems)


def _pointer(document: Any, path: str) -> Any:
    for part in path.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


class EmulatorThread:
    """Serves a ClusterEmulator on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.emulator: ClusterEmulator | None = None
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="kube-emulator", daemon=True)
        self._failure: BaseException | None = None

    def start(self, timeout_s: float = 30.0) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._failure:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._failure!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def calls(self) -> list[Call]:
        return list(self.emulator.calls) if self.emulator is not None else []

    def cpu_s(self) -> float:
        """CPU seconds the emulator's thread has used (its share of a benchmark's time)."""
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start()
            self._failure = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with ClusterEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
