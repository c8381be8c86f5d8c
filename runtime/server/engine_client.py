"""What the HTTP server needs of an engine, and nothing more: the `EngineClient` protocol.

Routes, the admin API, probes and metrics reach the engine only through these members, so
the server neither probes an engine's attributes nor reaches into its parts. `AsyncEngine`
implements it (a test checks each member), and so must anything else served over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from loraplex.runtime.engine.request import GenerationRequest, TokenEvent

if TYPE_CHECKING:  # the server listens before torch and the engine are imported
    import torch
    from transformers import PreTrainedTokenizerBase

    from loraplex.runtime.adapters.manager import AdapterManager
    from loraplex.runtime.engine.engine import EngineStats
    from loraplex.runtime.engine.memory_plan import MemoryPlan


class EngineClient(Protocol):
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Encodes prompts and renders chat templates (safe from the event loop thread)."""

    @property
    def adapters(self) -> AdapterManager:
        """Registers, resolves and lists adapters (safe from any thread)."""

    @property
    def model_id(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def memory_plan(self) -> MemoryPlan:
        """What the weights, adapters, activations and KV cache take on the device."""

    def stats(self) -> EngineStats:
        """Counters as of the last step (safe from any thread)."""

    def validate(self, request: GenerationRequest) -> None:
        """Raise `ValueError` now if the request can never run."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """The request's events, the last one `finished`; closing the iterator aborts it."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Stop generating; requests still running end with an ABORT event."""
