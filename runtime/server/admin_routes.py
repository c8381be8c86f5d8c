"""The adapter admin API the operator drives: list, inspect, register, unregister.

`PUT /v1/adapters/{name}` is idempotent: it registers the adapter (or confirms the
registration) and answers at once, 200 when the weights are resident in host RAM or on
the device, 202 while they are still being fetched or loaded; the caller polls
`GET /v1/adapters/{name}`. A load that fails shows as `state: error` with the reason in
`error` (and a PUT that finds its adapter failed answers 422 with that reason). A PUT
may carry `credentials` for the source: the manager keeps them in memory for this
adapter's fetches, and no answer, log line or metric ever shows them. Requests and
answers are the models of `loraplex.contracts.adapters`, which the operator and the
router read with.
`DELETE` unregisters at once; requests still using the adapter finish first, and its
weights are freed after the last one.
Errors use LoRAX's flat `{"error", "error_type"}` body.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from loraplex.contracts.adapters import (
    AdapterList,
    AdapterRegistration,
    AdapterRemoval,
    AdapterStatus,
)
from loraplex.runtime.adapters.errors import AdapterError, AdapterInUse
from loraplex.runtime.adapters.errors import AdapterNotFound as UnknownAdapter
from loraplex.runtime.adapters.source import SourceCredentials
from loraplex.runtime.server.admin_auth import require_admin
from loraplex.runtime.server.errors import ApiError, NotFound, NotReady, ValidationFailed
from loraplex.runtime.server.lorax_protocol import ErrorResponse
from loraplex.runtime.server.state import state_of

router = APIRouter(prefix="/v1/adapters", tags=["admin"], dependencies=[Depends(require_admin)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)}


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


def manager_of(request: Request) -> Any:
    engine = state_of(request).engine
    if engine is None:
        raise NotReady("adapters cannot be managed yet: the model is still loading")
    return getattr(engine, "adapters", None) or NoAdapters()


def _admin_error(error: AdapterError) -> ApiError:
    if isinstance(error, UnknownAdapter):
        return NotFound(str(error))
    if isinstance(error, AdapterInUse):
        return Conflict(str(error))
    return ValidationFailed(str(error))


async def call_manager(function: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
    except AdapterError as error:
        raise _admin_error(error) from error
    return result


async def _info(manager: Any, name: str) -> AdapterStatus:
    info = await call_manager(manager.get, name)
    if info is None:
        raise NotFound(f"adapter {name!r} is not registered")
    return info


@router.get("", responses=ERRORS)
async def list_adapters(request: Request) -> AdapterList:
    """Every registered adapter with its state, tier, rank, size, digest and error."""
    return AdapterList(adapters=await call_manager(manager_of(request).list))


@router.get("/{name:path}", responses=ERRORS)
async def get_adapter(request: Request, name: str) -> AdapterStatus:
    return await _info(manager_of(request), name)


@router.put("/{name:path}", response_model=AdapterStatus,
            responses={202: {"description": "registered, still loading",
                             "model": AdapterStatus}, **ERRORS})
async def put_adapter(request: Request, name: str, body: AdapterRegistration) -> JSONResponse:
    """Register `name` (idempotent): 200 once resident, 202 while loading. `credentials`,
    when given, are used for this adapter's fetches (kept in memory, never reported)."""
    manager = manager_of(request)
    credentials = SourceCredentials(**body.credentials.revealed()) if body.credentials else None
    await call_manager(manager.register, name, body.source, pinned=body.pinned,
                       preload=body.preload, credentials=credentials)
    info = await _info(manager, name)
    document = info.model_dump(mode="json")
    if info.failed:
        return JSONResponse({"error": info.error or "the adapter failed to load",
                             "error_type": "adapter_error", "adapter": document},
                            status_code=422)
    return JSONResponse(document, status_code=200 if info.loaded else 202)


@router.delete("/{name:path}", responses=ERRORS)
async def delete_adapter(request: Request, name: str) -> AdapterRemoval:
    """Unregister `name`: new requests for it get 404 at once; its weights are freed when
    the requests still using it finish (`outcome`: `removed` now, or `deferred`)."""
    outcome = await call_manager(manager_of(request).unregister, name)
    return AdapterRemoval(name=name, outcome=outcome)
