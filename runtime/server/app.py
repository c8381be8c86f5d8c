"""The FastAPI application of one runtime pod: every route, handler and middleware.

`create_app` takes a `ServerState` and nothing else, so the same app serves a real engine
under uvicorn (`launch.py`) and can be built in a test around any state. The OpenAPI
schema at `/openapi.json` documents every inference and admin route; it is what the fuzz
tests generate requests from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from loraplex import __version__
from loraplex.runtime.server import (
    admin_routes,
    lorax_routes,
    openai_chat,
    openai_completions,
    probe_routes,
    tokenize_routes,
    vllm_lora_routes,
)
from loraplex.runtime.server.access_log import AccessLogMiddleware
from loraplex.runtime.server.engine_collector import EngineCollector
from loraplex.runtime.server.error_handlers import install_error_handlers
from loraplex.runtime.server.state import ServerState


def create_app(state: ServerState, lifespan: Callable[[FastAPI], Any] | None = None) -> FastAPI:
    app = FastAPI(title="loraplex runtime",
                  description="Multi-LoRA inference: LoRAX and OpenAI protocols, adapter admin",
                  version=__version__, lifespan=lifespan,
                  max_body_size=state.server_config.max_request_bytes)  # beyond: 413 unread
    app.state.server = state
    state.metrics.registry.register(EngineCollector(state))
    for module in (probe_routes, lorax_routes, openai_completions, openai_chat, admin_routes,
                   vllm_lora_routes, tokenize_routes):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(AccessLogMiddleware)
    return app
