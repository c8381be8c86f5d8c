"""Server-sent events that clean up after themselves, and cancellation on disconnect.

A request's engine work must end the moment its client goes away, streaming or not: a
streamed response closes the event generator (which aborts the engine request and frees
its KV blocks) however the stream ends, and a non-streaming handler races its work
against the client's `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from loraplex.runtime.server.errors import ApiError, IncompleteGeneration

log = logging.getLogger(__name__)

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_data(payload: dict[str, Any] | str) -> bytes:
    """One SSE event: `data:<json>` and a blank line (the form LoRAX and OpenAI send)."""
    text = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{text}\n\n".encode()


def stream_failure(request: Request, error: Exception) -> ApiError:
    """The `ApiError` to send as an in-stream event once headers are out (logs the rest)."""
    if not isinstance(error, ApiError):
        log.error("stream of %s failed", request.url.path, exc_info=error)
        error = IncompleteGeneration(f"generation stopped: {type(error).__name__}")
    record = getattr(request.state, "record", None)
    if record is not None:
        record.error_type = error.error_type
    return error


class EventStream(StreamingResponse):
    """A `text/event-stream` response whose body is closed and `on_close` run on any end."""

    def __init__(self, chunks: AsyncIterator[bytes], on_close: Callable[[], None],
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(chunks, media_type="text/event-stream",
                         headers={**SSE_HEADERS, **(headers or {})})
        self._chunks = chunks
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self._chunks, "aclose", None)
            try:
                if close is not None:
                    await close()
            finally:
                self._on_close()


class ClientDisconnected(Exception):
    """The client closed its connection before its answer was ready."""


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it and raising `ClientDisconnected` if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
