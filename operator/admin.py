"""Client of a runtime pod's admin API: list, load (PUT) and unload (DELETE) adapters.

`GET /v1/adapters` is the operator's source of truth: what a pod reports, not what it
was asked, decides whether a placement is Ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from loraplex.contracts.adapters import (
    AdapterCredentials,
    AdapterList,
    AdapterRegistration,
    AdapterStatus,
    Preload,
)


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


def parse_adapter_list(body: str | bytes) -> dict[str, AdapterStatus]:
    """The adapters of a `GET /v1/adapters` answer by name; `AdminError` when it is not one."""
    try:
        return AdapterList.model_validate_json(body).by_name()
    except ValidationError as error:
        raise AdminError(f"unexpected /v1/adapters body: {error}") from None


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

    async def list_adapters(self, pod_url: str) -> dict[str, AdapterStatus]:
        response = await self._call("GET", f"{pod_url}/v1/adapters")
        return parse_adapter_list(response.content)

    async def load(self, pod_url: str, name: str, source: str, *, pinned: bool,
                   preload: Preload, credentials: Mapping[str, str] | None = None
                   ) -> AdapterStatus | None:
        """`PUT` the adapter; `credentials` (admin API field names) serve its fetches. The
        pod's answer, or None when it is not an adapter's status."""
        registration = AdapterRegistration(
            source=source, pinned=pinned, preload=preload,
            credentials=AdapterCredentials.model_validate(credentials, strict=False)
            if credentials else None)
        response = await self._call("PUT", f"{pod_url}/v1/adapters/{quote(name, safe='')}",
                                    json=registration.wire_body())
        try:
            return AdapterStatus.model_validate_json(response.content)
        except ValidationError:
            return None

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
