"""Client of a runtime pod's admin API: list, load (PUT) and unload (DELETE) adapters.

`GET /v1/adapters` is the operator's source of truth: what a pod reports, not what it
was asked, decides whether a placement is Ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx

LOADED_STATES = frozenset({"host", "device"})
Preload = Literal["host", "device"]


class AdminError(RuntimeError):
    """A pod's admin API could not be reached (`status` None) or refused a call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        """The pod understood and said no (bad adapter): retrying the same call won't help."""
        return self.status is not None and 400 <= self.status < 500 \
            and self.status not in (404, 408, 409, 429)


@dataclass(frozen=True)
class PodAdapter:
    """One adapter as a pod reports it."""

    name: str
    state: str  # downloading | host | device | error
    source: str | None = None
    pinned: bool | None = None
    rank: int | None = None
    size_bytes: int | None = None
    digest: str | None = None
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.state in LOADED_STATES

    @property
    def failed(self) -> bool:
        return self.state == "error"


def parse_adapter_list(payload: Any) -> dict[str, PodAdapter]:
    """`{"adapters": [...]}`, a bare list, or a name → entry mapping, all accepted."""
    if isinstance(payload, Mapping) and "adapters" in payload:
        payload = payload["adapters"]
    if isinstance(payload, Mapping):
        payload = [{"name": name, **entry} for name, entry in payload.items()]
    if not isinstance(payload, list):
        raise AdminError(f"unexpected /v1/adapters body: {str(payload)[:200]}")
    adapters = {}
    for entry in payload:
        name = entry.get("name") or entry.get("id")
        if not name:
            continue
        adapters[name] = PodAdapter(
            name=name, state=str(entry.get("state", "")), source=entry.get("source"),
            pinned=entry.get("pinned"), rank=entry.get("rank"),
            size_bytes=entry.get("size_bytes"), digest=entry.get("digest"),
            error=entry.get("error"),
        )
    return adapters


class AdminClient:
    """One per BaseModelDeployment (one token); safe to share between concurrent tasks."""

    def __init__(self, token: str, timeout_s: float, max_connections: int = 64) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=timeout_s, trust_env=False,
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_adapters(self, pod_url: str) -> dict[str, PodAdapter]:
        response = await self._call("GET", f"{pod_url}/v1/adapters")
        return parse_adapter_list(response.json())

    async def load(self, pod_url: str, name: str, source: str, *, pinned: bool,
                   preload: Preload, credentials: Mapping[str, str] | None = None
                   ) -> PodAdapter | None:
        """`PUT` the adapter; `credentials` (admin API field names) serve its fetches."""
        body: dict[str, Any] = {"source": source, "pinned": pinned, "preload": preload}
        if credentials:
            body["credentials"] = dict(credentials)
        response = await self._call("PUT", f"{pod_url}/v1/adapters/{quote(name, safe='')}",
                                    json=body)
        try:
            entry = response.json()
        except ValueError:
            return None
        return parse_adapter_list([{"name": name, **entry}]).get(name) \
            if isinstance(entry, Mapping) else None

    async def unload(self, pod_url: str, name: str) -> None:
        await self._call("DELETE", f"{pod_url}/v1/adapters/{quote(name, safe='')}",
                         missing_ok=True)

    async def _call(self, method: str, url: str, *, missing_ok: bool = False,
                    **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise AdminError(f"{method} {url}: {type(error).__name__}: {error}") from error
        if response.status_code == 404 and missing_ok:
            return response
        if response.status_code >= 400:
            raise AdminError(f"HTTP {response.status_code}: {_error_text(response)}",
                             response.status_code)
        return response


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, Mapping):
        return str(body.get("error") or body.get("detail") or body)[:500]
    return str(body)[:500]
