"""The adapter admin API the operator drives: list, inspect, register, unregister.

`PUT /v1/adapters/{name}` is idempotent: it registers the adapter (or confirms the
registration) and answers at once, 200 when the weights are resident in host RAM or on
the device, 202 while they are still being fetched or loaded; the caller polls
`GET /v1/adapters/{name}`. A load that fails shows as `state: error` with the reason in
`error` (and a PUT that finds its adapter failed answers 422 with that reason). A PUT
may carry `credentials` for the source (admin_protocol.py): the manager keeps them in
memory for this adapter's fetches, and no answer, log line or metric ever shows them.
`DELETE` unregisters at once; requests still using the adapter finish first, and its
weights are freed after the last one.
Errors use LoRAX's flat `{"error", "error_type"}` body.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from loraplex.runtime.adapters.errors import AdapterError, AdapterInUse
from loraplex.runtime.adapters.errors import AdapterNotFound as UnknownAdapter
from loraplex.runtime.server.admin_auth import require_admin
from loraplex.runtime.server.admin_protocol import AdapterRegistration
from loraplex.runtime.server.errors import ApiError, NotFound, NotReady, ValidationFailed
from loraplex.runtime.server.lorax_protocol import ErrorResponse
from loraplex.runtime.server.state import state_of

router = APIRouter(prefix="/v1/adapters", tags=["admin"], dependencies=[Depends(require_admin)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)}
RESIDENT_STATES = frozenset({"host", "device"})
TIERS = frozenset({"disk", "host", "device"})
JSON_TYPES = (str, int, float, bool, type(None))


class Conflict(ApiError):
    status_code = 409
    error_type = "conflict"
    openai_type = "invalid_request_error"


class NoAdapters:
    """Stands in for the manager of an engine built without LoRA support: it holds no
    adapter and refuses every registration, so the admin API still answers in 4xx."""

    def list(self) -> list[Any]:
        return []

    def get(self, name: str) -> Any:
        raise UnknownAdapter(f"adapter {name!r} is not registered")

    def register(self, name: str, source: str, **_: Any) -> Any:
        raise AdapterError("unsupported", "this engine cannot serve LoRA adapters")

    def unregister(self, name: str) -> Any:
        raise UnknownAdapter(f"adapter {name!r} is not registered")


def _manager(request: Request) -> Any:
    engine = state_of(request).engine
    if engine is None:
        raise NotReady("adapters cannot be managed yet: the model is still loading")
    return getattr(engine, "adapters", None) or NoAdapters()


def adapter_json(info: Any) -> dict[str, Any]:
    """An `AdapterInfo` as JSON: its plain fields, enums by value, and `tier` (where the
    weights are: disk, host or device; null while downloading or failed)."""
    if dataclasses.is_dataclass(info):
        items = {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    else:
        items = dict(vars(info))
    document: dict[str, Any] = {}
    for key, value in items.items():
        value = getattr(value, "value", value)
        if isinstance(value, JSON_TYPES):
            document[key] = value
    state = document.get("state")
    document.setdefault("tier", state if state in TIERS else None)
    return document


def _admin_error(error: AdapterError) -> ApiError:
    if isinstance(error, UnknownAdapter):
        return NotFound(str(error))
    if isinstance(error, AdapterInUse):
        return Conflict(str(error))
    return ValidationFailed(str(error))


async def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except AdapterError as error:
        raise _admin_error(error) from error
    return result


async def _info(manager: Any, name: str) -> Any:
    info = await _call(manager.get, name)
    if info is None:
        raise NotFound(f"adapter {name!r} is not registered")
    return info


@router.get("", responses=ERRORS)
async def list_adapters(request: Request) -> dict[str, Any]:
    """Every registered adapter with its state, tier, rank, size, digest and error."""
    manager = _manager(request)
    return {"adapters": [adapter_json(info) for info in await _call(manager.list)]}


@router.get("/{name:path}", responses=ERRORS)
async def get_adapter(request: Request, name: str) -> dict[str, Any]:
    return adapter_json(await _info(_manager(request), name))


@router.put("/{name:path}", responses={202: {"description": "registered, still loading"},
                                       **ERRORS})
async def put_adapter(request: Request, name: str, body: AdapterRegistration) -> JSONResponse:
    """Register `name` (idempotent): 200 once resident, 202 while loading. `credentials`,
    when given, are used for this adapter's fetches (kept in memory, never reported)."""
    manager = _manager(request)
    credentials = body.credentials.source_credentials() if body.credentials else None
    await _call(manager.register, name, body.source, pinned=body.pinned, preload=body.preload,
                credentials=credentials)
    document = adapter_json(await _info(manager, name))
    if document.get("state") == "error":
        return JSONResponse({"error": document.get("error") or "the adapter failed to load",
                             "error_type": "adapter_error", "adapter": document},
                            status_code=422)
    status = 200 if document.get("state") in RESIDENT_STATES else 202
    return JSONResponse(document, status_code=status)


@router.delete("/{name:path}", responses=ERRORS)
async def delete_adapter(request: Request, name: str) -> dict[str, Any]:
    """Unregister `name`: new requests for it get 404 at once; its weights are freed when
    the requests still using it finish (`outcome`: `removed` now, or `deferred`)."""
    manager = _manager(request)
    outcome = await _call(manager.unregister, name)
    return {"name": name, "deleted": True, "outcome": outcome}
