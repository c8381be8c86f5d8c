"""vLLM's runtime LoRA API: `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter`.

AIBrix, KServe and the Gateway API Inference Extension's LoRA syncer drive vLLM pods
through these two routes; here they act on the same adapters as `/v1/adapters`, behind
the same admin guard. Status codes, messages and answers follow vLLM's
(`vllm/entrypoints/openai/serving_models.py`, v0.10-0.11): a plain-text "Success: ..."
on 200; 400 `InvalidUserInput` for a missing field or a name already loaded; 404
`NotFoundError` for an unknown name or a path with no adapter; 400 `BadRequestError`
when the adapter cannot be loaded (the reason in `message`). As in vLLM, a load answers
once the weights are loaded (or refused), not while they are still being fetched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict

from loraplex.contracts.adapters import AdapterState, AdapterStatus
from loraplex.runtime.server.admin_auth import require_admin
from loraplex.runtime.server.admin_routes import call_manager, manager_of
from loraplex.runtime.server.errors import ApiError, NotReady

if TYPE_CHECKING:
    from loraplex.runtime.adapters.manager import AdapterManager

router = APIRouter(tags=["vllm"], dependencies=[Depends(require_admin)])
SETTLED_STATES = frozenset(AdapterState) - {AdapterState.DOWNLOADING}
LOAD_POLL_S = 0.05
LOAD_WAIT_S = 600.0  # beyond this the load goes on, and the caller is told to poll


class InvalidUserInput(ApiError):
    status_code = 400
    error_type = "validation"
    openai_type = "InvalidUserInput"
    openai_code = 400


class LoraNotFound(ApiError):
    status_code = 404
    error_type = "not_found"
    openai_type = "NotFoundError"
    openai_code = 404


class LoadRefused(ApiError):
    status_code = 400
    error_type = "adapter_error"
    openai_type = "BadRequestError"
    openai_code = 400


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = ""
    lora_path: str = ""
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = ""
    lora_int_id: int | None = None


def _is_missing_local_path(path: str) -> bool:
    if "://" in path and not path.startswith("file://"):
        return False
    return not Path(path.removeprefix("file://")).exists()


async def _wait_until_settled(manager: AdapterManager, name: str) -> AdapterStatus:
    """The adapter's status once its load has ended, loaded or failed."""
    deadline = time.monotonic() + LOAD_WAIT_S
    while True:
        status: AdapterStatus = call_manager(manager.get, name)
        if status.state in SETTLED_STATES:
            return status
        if time.monotonic() > deadline:
            raise NotReady(f"LoRA adapter '{name}' is still loading; GET "
                           f"/v1/adapters/{name} tells when it is ready")
        await asyncio.sleep(LOAD_POLL_S)


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse)
async def load_lora_adapter(request: Request, body: LoadLoRAAdapterRequest) -> str:
    """Load `lora_path` as `lora_name` (vLLM); answers once the weights are loaded."""
    if not body.lora_name or not body.lora_path:
        raise InvalidUserInput("Both 'lora_name' and 'lora_path' must be provided.")
    manager = manager_of(request)
    known = {info.name for info in call_manager(manager.list)}
    if body.lora_name in known and not body.load_inplace:
        raise InvalidUserInput(f"The lora adapter '{body.lora_name}' has already been "
                               "loaded.")
    if _is_missing_local_path(body.lora_path):
        raise LoraNotFound(f"No adapter found for {body.lora_path}")
    if body.load_inplace and body.lora_name in known:
        call_manager(manager.unregister, body.lora_name)
    try:
        call_manager(manager.register, body.lora_name, body.lora_path)
    except ApiError as error:
        raise LoadRefused(error.message) from error
    status = await _wait_until_settled(manager, body.lora_name)
    if status.failed:
        call_manager(manager.unregister, body.lora_name)
        raise LoadRefused(status.error or "the adapter failed to load")
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse)
async def unload_lora_adapter(request: Request, body: UnloadLoRAAdapterRequest) -> str:
    """Unload `lora_name` (vLLM); requests still using it finish first."""
    if not body.lora_name and body.lora_int_id is None:
        raise InvalidUserInput("either 'lora_name' and 'lora_int_id' needs to be provided.")
    manager = manager_of(request)
    known = {info.name for info in call_manager(manager.list)}
    if body.lora_name not in known:
        raise LoraNotFound(f"The lora adapter '{body.lora_name}' cannot be found.")
    call_manager(manager.unregister, body.lora_name)
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
