"""Probes and descriptions: `/health`, `/ready`, `/info`, `/metrics`, `/v1/models`.

`/health` is liveness: it answers 200 as long as the process serves HTTP, also while the
model loads (a liveness probe that failed during a long load would restart the pod in a
loop). `/ready` is readiness: 200 only once the model is loaded and until shutdown
starts, so that Services send traffic only to pods that can take it.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraplex import __version__
from loraplex.runtime.server.engine_client import EngineClient
from loraplex.runtime.server.state import Phase, state_of

router = APIRouter(tags=["probes"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: 200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "loading or draining"}})
async def ready(request: Request) -> JSONResponse:
    """Readiness: 200 once the model is loaded, 503 before and while draining."""
    state = state_of(request)
    body: dict[str, Any] = {"status": state.phase.value}
    if state.failure:
        body["error"] = state.failure
    return JSONResponse(body, status_code=200 if state.phase is Phase.READY else 503)


def _scheduling_info(engine: EngineClient | None) -> dict[str, Any]:
    """LoRAX's (TGI's) batching fields, filled with this engine's real equivalents: the KV
    cache's capacity in tokens; waiting requests join the batch at the next step (at most
    one decode step of waiting, whatever the running/waiting ratio) with their prefill
    chunked into it; prompts are tokenized in the event loop's default thread pool."""
    stats = engine.stats() if engine is not None else None
    return {
        "max_batch_total_tokens": stats.num_total_blocks * stats.block_size if stats else None,
        "max_waiting_tokens": 1,
        "waiting_served_ratio": 0.0,
        "eager_prefill": True,
        "validation_workers": min(32, (os.cpu_count() or 1) + 4),  # ThreadPoolExecutor's
        "model_pipeline_tag": "text-generation",
        "model_sha": None,
        "sha": None,
        "docker_label": None,
    }


def memory_plan(engine: EngineClient | None) -> dict[str, int | str] | None:
    """The engine's memory plan in bytes (None before the model is loaded)."""
    return engine.memory_plan.as_dict() if engine is not None else None


def served_dtype(engine: EngineClient | None, configured: str) -> str:
    """The engine's dtype as `/info` and the metrics name it (`float32`), or the configured
    one before the engine is loaded."""
    return str(engine.dtype if engine is not None else configured).removeprefix("torch.")


@router.get("/info")
async def info(request: Request) -> dict[str, Any]:
    """The model, its dtype and device, and the limits requests must respect (with every
    field of LoRAX's `Info`)."""
    state = state_of(request)
    engine_config, server_config = state.engine_config, state.server_config
    engine = state.engine
    device = engine.device if engine is not None else engine_config.device
    service = state.service
    limits = service.limits if service is not None else None
    return {
        **_scheduling_info(engine),
        "model_id": state.model_id,
        "model_source": engine_config.model,
        "model_dtype": served_dtype(engine, engine_config.dtype),
        "model_device_type": str(device),
        "quantization": (engine.memory_plan.quantization if engine is not None
                         else engine_config.quantize),
        "phase": state.phase.value,
        "max_model_len": limits.max_model_len if limits else None,
        "max_input_length": limits.max_input_length if limits else None,
        "max_total_tokens": limits.max_model_len if limits else None,
        "max_best_of": server_config.max_best_of,
        "max_stop_sequences": server_config.max_stop_sequences,
        "max_num_seqs": engine_config.max_num_seqs,
        "max_num_batched_tokens": engine_config.max_num_batched_tokens,
        "max_waiting": server_config.max_waiting,
        "max_concurrent_requests": state.gate.capacity,
        "max_lora_rank": engine_config.max_lora_rank,
        "device_slots": engine_config.device_slots,
        "block_size": engine_config.block_size,
        "memory_plan": memory_plan(engine),
        "prefix_caching": engine_config.prefix_caching,
        "version": __version__,
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format (series of adapters no longer registered are dropped first)."""
    state = state_of(request)
    registered = ({info.name for info in state.engine.adapters.list()}
                  if state.engine is not None else set())
    state.metrics.prune_adapters(registered)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    """OpenAI model list: the base model, then every registered adapter (`parent` = base)."""
    state = state_of(request)
    base = state.model_id
    created = int(state.started_at)
    data = [{"id": base, "object": "model", "created": created, "owned_by": "loraplex",
             "root": state.engine_config.model, "parent": None}]
    if state.engine is not None:
        for adapter in state.engine.adapters.list():
            data.append({"id": adapter.name, "object": "model", "created": created,
                         "owned_by": "loraplex", "root": str(adapter.source), "parent": base})
    return {"object": "list", "data": data}
