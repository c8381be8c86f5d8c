"""One JSON line per HTTP request: who asked for what, how long it took, how it ended.

A pure ASGI middleware (not Starlette's `BaseHTTPMiddleware`, which buffers streams and
hides client disconnects) so the line is written when the response really ends, streams
included. Handlers fill the request's `RequestRecord` (adapter, token counts, time to
first token); the middleware adds method, path, status and duration. Probe and scrape
paths log at DEBUG so that kubelet and Prometheus do not drown the requests.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("loraplex.access")

QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
REQUEST_ID_HEADER = b"x-request-id"


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str = ""
    path: str = ""
    status: int = 0
    adapter: str | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float | None = None
    duration_s: float = 0.0
    finish_reason: str | None = None
    error_type: str | None = None
    client: str | None = None


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1").strip()
            if 0 < len(text) <= 128 and text.isprintable():
                return text
    return uuid.uuid4().hex


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        record = RequestRecord(_request_id(scope), method=scope["method"], path=scope["path"],
                               client=client[0] if client else None)
        scope.setdefault("state", {})["record"] = record
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, record.request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            record.duration_s = round(time.perf_counter() - started, 6)
            if record.status == 0:
                record.status = 499  # the client went away before any response started
            level = logging.DEBUG if record.path in QUIET_PATHS else logging.INFO
            if log.isEnabledFor(level):
                log.log(level, json.dumps({"event": "request", **asdict(record)}))
