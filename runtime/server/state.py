"""The pod's lifecycle (loading → ready → draining) and what each route reads from it.

The HTTP server starts before the model is loaded, so that `/health` answers while
weights load; routes that need the engine go through `service_of`, which answers 503
until the engine is attached and again once the pod drains for shutdown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

from fastapi import Request

from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.runtime.server.admission import AdmissionGate
from loraplex.runtime.server.engine_client import EngineClient
from loraplex.runtime.server.errors import NotReady
from loraplex.runtime.server.inference import InferenceService, Limits
from loraplex.runtime.server.input_cost import max_token_chars
from loraplex.runtime.server.metrics import ServerMetrics


class Phase(str, Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass
class ServerState:
    engine_config: EngineConfig
    server_config: ServerConfig
    metrics: ServerMetrics = field(init=False)
    phase: Phase = Phase.LOADING
    engine: EngineClient | None = None
    service: InferenceService | None = None
    gate: AdmissionGate = field(init=False)
    started_at: float = field(default_factory=time.time)
    failure: str | None = None

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.server_config.max_adapter_metric_labels)
        self.gate = AdmissionGate(self.engine_config.max_num_seqs,
                                  self.server_config.max_waiting)

    @property
    def model_id(self) -> str:
        if self.server_config.served_model_name:
            return self.server_config.served_model_name
        engine_id = self.engine.model_id if self.engine is not None else ""
        return engine_id or self.engine_config.model

    def attach(self, engine: EngineClient) -> InferenceService:
        """Serve with `engine` from now on."""
        max_model_len = int(engine.max_model_len)
        max_input = self.server_config.max_input_length or max_model_len - 1
        limits = Limits(max_model_len=max_model_len,
                        max_input_length=min(max_input, max_model_len - 1),
                        max_best_of=self.server_config.max_best_of,
                        max_stop_sequences=self.server_config.max_stop_sequences,
                        grammar_cache_bytes=self.server_config.grammar_cache_bytes,
                        max_token_chars=max_token_chars(engine.tokenizer))
        self.engine = engine
        self.metrics.add_vllm_series(self.model_id, max_model_len)
        self.service = InferenceService(engine, self.model_id, limits, self.gate, self.metrics)
        self.phase = Phase.READY
        return self.service

    def start_draining(self) -> None:
        self.phase = Phase.DRAINING
        self.gate.start_draining()


def state_of(request: Request) -> ServerState:
    return request.app.state.server


def service_of(request: Request) -> InferenceService:
    """The inference service, or `NotReady` (503) while loading or draining."""
    state = state_of(request)
    if state.phase is Phase.DRAINING:
        raise NotReady("the server is shutting down; retry on another replica")
    if state.service is None:
        raise NotReady("the model is still loading; retry shortly",
                       headers={"Retry-After": "5"})
    return state.service
