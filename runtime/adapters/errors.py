"""Errors of the adapter subsystem, each with a machine-readable `reason`.

A refused adapter must never take the server down: every problem with one adapter (its
files, its source, its config) surfaces as an `AdapterError` attached to that adapter only.
The HTTP layer maps `reason` to a status code and shows `str(error)` to the user, so the
message always names the adapter and the offending field, file or tensor.
"""

from __future__ import annotations


class AdapterError(ValueError):
    """An adapter that cannot be served, and why (`reason` is a stable short code)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AdapterNotFound(AdapterError):
    """A request named an adapter that is neither registered nor an allowed dynamic source."""

    def __init__(self, message: str) -> None:
        super().__init__("not_found", message)

