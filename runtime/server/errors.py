"""Errors the HTTP layer answers with, and the two body shapes clients expect.

Every failure a handler can name is an `ApiError` carrying its HTTP status and a LoRAX
`error_type`; the exception handlers (see `error_handlers.py`) render it in the caller's
protocol: LoRAX's flat `{"error", "error_type"}` (which `lorax-client` maps to its
exception classes by `error_type`, then by status) or OpenAI's nested
`{"error": {"message", "type", "param", "code"}}` (which the `openai` package maps by
status). Keeping one exception type for both protocols means validation code is written
once and the shape is chosen only at the edge.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status_code = 500
    error_type = "internal"
    openai_type = "server_error"

    def __init__(self, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class ValidationFailed(ApiError):
    """The request is well-formed JSON but asks for something invalid or unsupported."""

    status_code = 422
    error_type = "validation"
    openai_type = "invalid_request_error"


class AdapterNotFound(ApiError):
    """The named adapter is not registered and may not be fetched on demand.

    LoRAX itself answers 424 `generation` here, because it always tries a hub download
    first; loraplex never fetches an unlisted adapter, so "not found" is the true answer
    (`lorax-client` raises `NotFoundError`, `openai` raises `NotFoundError`).
    """

    status_code = 404
    error_type = "not_found"
    openai_type = "invalid_request_error"


class GenerationFailed(ApiError):
    """The request was valid but could not be served, e.g. its adapter failed to load."""

    status_code = 424
    error_type = "generation"
    openai_type = "server_error"


class IncompleteGeneration(ApiError):
    """A stream broke off after its headers were sent, for a reason not the client's."""

    status_code = 500
    error_type = "incomplete_generation"
    openai_type = "server_error"


class Overloaded(ApiError):
    status_code = 429
    error_type = "overloaded"
    openai_type = "rate_limit_error"


class NotReady(ApiError):
    """The model is still loading, or the server is draining for shutdown."""

    status_code = 503
    error_type = "unavailable"
    openai_type = "server_error"


class Unauthorized(ApiError):
    status_code = 401
    error_type = "unauthorized"
    openai_type = "authentication_error"


class Forbidden(ApiError):
    status_code = 403
    error_type = "forbidden"
    openai_type = "permission_error"


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found"
    openai_type = "invalid_request_error"


class HttpError(ApiError):
    """A plain HTTP condition the framework raised (405 method not allowed, ...)."""

    error_type = "http"
    openai_type = "invalid_request_error"

    def __init__(self, status_code: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status_code = status_code


def lorax_error_body(error: ApiError) -> dict[str, Any]:
    return {"error": error.message, "error_type": error.error_type}


def openai_error_body(error: ApiError) -> dict[str, Any]:
    code: str | None = error.error_type
    if isinstance(error, AdapterNotFound):
        code = "model_not_found"
    return {"error": {"message": error.message, "type": error.openai_type,
                      "param": error.param, "code": code}}


OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models")


def error_body_for_path(path: str, error: ApiError) -> dict[str, Any]:
    """The body shape the protocol behind `path` expects (admin and probes use LoRAX's)."""
    if path.startswith(OPENAI_PATHS):
        return openai_error_body(error)
    return lorax_error_body(error)
