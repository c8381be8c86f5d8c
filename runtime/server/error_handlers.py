"""Turns every failure into a 4xx/5xx body in the caller's protocol, never a stack trace.

FastAPI's own answers (`{"detail": [...]}` with 422, a bare 400 for an undecodable body)
match neither LoRAX nor OpenAI; these handlers replace them so that a client's mistake,
whatever it is (malformed JSON, invalid UTF-8, wrong types, unknown fields), is a 4xx with
a sentence that names the problem, in the body shape and status its client library
expects (422 on LoRAX's routes, 400 on OpenAI's).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from loraplex.runtime.server.errors import (
    ApiError,
    HttpError,
    NotFound,
    ValidationFailed,
    error_body_for_path,
    status_for_path,
)
from loraplex.runtime.server.streaming import ClientDisconnected

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 5


def describe_validation_errors(errors: Sequence[dict[str, Any]]) -> str:
    """One readable line per pydantic error: `parameters.top_p: must be <= 1` style."""
    lines = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        where = ".".join(location) or "body"
        kind = error.get("type", "")
        if kind == "json_invalid":
            detail = error.get("ctx", {}).get("error", "")
            lines.append(f"malformed JSON body ({detail}) at character {where}")
        elif kind == "extra_forbidden":
            lines.append(f"{where}: unknown field (not part of this API)")
        elif kind == "missing":
            lines.append(f"{where}: field required")
        else:
            lines.append(f"{where}: {error.get('msg', 'invalid value')}")
    if len(errors) > MAX_REPORTED_ERRORS:
        lines.append(f"... and {len(errors) - MAX_REPORTED_ERRORS} more")
    return "; ".join(lines)


def api_error_response(request: Request, error: ApiError) -> JSONResponse:
    record = getattr(request.state, "record", None)
    if record is not None:
        record.error_type = error.error_type
    state = getattr(request.app.state, "server", None)
    if state is not None:
        state.metrics.http_errors.labels(error.error_type).inc()
    path = request.url.path
    return JSONResponse(error_body_for_path(path, error),
                        status_code=status_for_path(path, error), headers=error.headers)


async def _on_api_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, ApiError):
        raise TypeError(f"handler registered for ApiError got {type(error).__name__}")
    return api_error_response(request, error)


async def _on_validation_error(request: Request, error: Exception) -> JSONResponse:
    errors = error.errors() if isinstance(error, RequestValidationError) else []
    param = None
    if errors:
        location = [str(part) for part in errors[0].get("loc", ()) if part != "body"]
        param = ".".join(location) or None
    failure = ValidationFailed(describe_validation_errors(errors) or "invalid request",
                               param=param)
    return api_error_response(request, failure)


async def _on_http_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, HTTPException):
        raise TypeError(f"handler registered for HTTPException got {type(error).__name__}")
    if error.status_code == 400 and isinstance(error.__cause__, UnicodeDecodeError):
        return api_error_response(request, ValidationFailed("request body is not valid UTF-8"))
    if error.status_code == 400:
        return api_error_response(request, ValidationFailed(f"unreadable body: {error.detail}"))
    if error.status_code == 404:
        failure: ApiError = NotFound(f"no route {request.method} {request.url.path}")
    else:
        failure = HttpError(error.status_code, str(error.detail), dict(error.headers or {}))
    return api_error_response(request, failure)


async def _on_client_gone(request: Request, error: Exception) -> Response:
    """Nobody will read this answer; 499 (nginx's "client closed request") marks the log."""
    return Response(status_code=499)


async def _on_unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return api_error_response(request, ApiError(f"internal error: {type(error).__name__}"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnected, _on_client_gone)
    app.add_exception_handler(Exception, _on_unexpected)
