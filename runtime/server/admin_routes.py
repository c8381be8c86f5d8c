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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from loraplex.contracts.adapters import (
    AdapterList,
    AdapterRegistration,
    AdapterRemoval,
    AdapterStatus,
)
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.errors import AdapterNotFound as UnknownAdapter
from loraplex.runtime.adapters.source import SourceCredentials
from loraplex.runtime.server.admin_auth import require_admin
from loraplex.runtime.server.errors import NotFound, NotReady, ValidationFailed
from loraplex.runtime.server.lorax_protocol import ErrorResponse
from loraplex.runtime.server.state import state_of

if TYPE_CHECKING:
    from loraplex.runtime.adapters.manager import AdapterManager

T = TypeVar("T")
router = APIRouter(prefix="/v1/adapters", tags=["admin"], dependencies=[Depends(require_admin)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422, 503)}


def manager_of(request: Request) -> AdapterManager:
    engine = state_of(request).engine
    if engine is None:
        raise NotReady("adapters cannot be managed yet: the model is still loading")
    return engine.adapters


def call_manager(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`function(...)`, its `AdapterError` as the API's error (404 unknown, else 422)."""
    try:
        return function(*args, **kwargs)
    except UnknownAdapter as error:
        raise NotFound(str(error)) from error
    except AdapterError as error:
        raise ValidationFailed(str(error)) from error


def _info(manager: AdapterManager, name: str) -> AdapterStatus:
    return call_manager(manager.get, name)


@router.get("", responses=ERRORS)
async def list_adapters(request: Request) -> AdapterList:
    """Every registered adapter with its state, tier, rank, size, digest and error."""
    return AdapterList(adapters=call_manager(manager_of(request).list))


@router.get("/{name:path}", responses=ERRORS)
async def get_adapter(request: Request, name: str) -> AdapterStatus:
    return _info(manager_of(request), name)


@router.put("/{name:path}", response_model=AdapterStatus,
            responses={202: {"description": "registered, still loading",
                             "model": AdapterStatus}, **ERRORS})
async def put_adapter(request: Request, name: str, body: AdapterRegistration) -> JSONResponse:
    """Register `name` (idempotent): 200 once resident, 202 while loading. `credentials`,
    when given, are used for this adapter's fetches (kept in memory, never reported)."""
    manager = manager_of(request)
    credentials = SourceCredentials(**body.credentials.revealed()) if body.credentials else None
    call_manager(manager.register, name, body.source, pinned=body.pinned, preload=body.preload,
                 credentials=credentials)
    info = _info(manager, name)
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
    return AdapterRemoval(name=name, outcome=call_manager(manager_of(request).unregister, name))
