"""Errors the HTTP layer answers with, and the two body shapes clients expect.

Every failure a handler can name is an `ApiError` carrying its HTTP status and a LoRAX
`error_type`; the exception handlers (see `error_handlers.py`) render it in the caller's
protocol: LoRAX's flat `{"error", "error_type"}` (which `lorax-client` maps to its
exception classes by `error_type`, then by status) or OpenAI's nested
`{"error": {"message", "type", "param", "code"}}` (which the `openai` package maps by
status). Keeping one exception type for both protocols means validation code is written
once and the shape is chosen only at the edge.

The status differs only for a request the server refuses as invalid: LoRAX answers 422,
OpenAI and vLLM answer 400 (`openai.BadRequestError`), so `openai_status` maps one to
the other on the OpenAI-shaped routes.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status_code = 500
    error_type = "internal"
    openai_type = "server_error"
    openai_code: str | int | None = None  # None: `error_type` (vLLM's own routes: the status)

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


class GenerationInterrupted(ApiError):
    """The server is shutting down and ended this request before it finished.

    Streams get it as their last event; a request that waits for its whole answer gets
    a 503 (retry on another replica), with the same `error_type`.
    """

    status_code = 503
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
    code: str | int | None = error.openai_code or error.error_type
    if isinstance(error, AdapterNotFound):
        code = "model_not_found"
    return {"error": {"message": error.message, "type": error.openai_type,
                      "param": error.param, "code": code}}


OPENAI_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models",
                "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/tokenize", "/detokenize")


def is_openai_path(path: str) -> bool:
    """Whether `path` speaks OpenAI's (and vLLM's) protocol; admin and probes use LoRAX's.

    `/tokenize` is vLLM's route and LoRAX's at once; it answers in OpenAI's shape.
    """
    return path.startswith(OPENAI_PATHS)


def openai_status(error: ApiError) -> int:
    """OpenAI's status for `error`: 400 where LoRAX says 422 (an invalid request)."""
    return 400 if error.status_code == 422 else error.status_code


def error_body_for_path(path: str, error: ApiError) -> dict[str, Any]:
    """The body shape the protocol behind `path` expects (admin and probes use LoRAX's)."""
    if is_openai_path(path):
        return openai_error_body(error)
    return lorax_error_body(error)


def status_for_path(path: str, error: ApiError) -> int:
    return openai_status(error) if is_openai_path(path) else error.status_code
