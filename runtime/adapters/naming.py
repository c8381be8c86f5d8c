"""Adapter names: what a client or the operator may call an adapter.

Names arrive from HTTP requests, so they are validated before anything else sees them.
A name is one to four segments joined by `/` (hub-like ids such as `my-org/support-bot`),
each segment starting with a letter or digit, so `..`, `.` and absolute paths cannot be
spelled. Names are only ever dictionary keys: the disk cache derives its folder names from
the source's hash, never from the name.
"""

from __future__ import annotations

import re

from loraplex.runtime.adapters.errors import AdapterError

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
NAME_PATTERN = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,3}}")
MAX_NAME_LENGTH = 256


def validate_adapter_name(name: str) -> str:
    """Return `name` unchanged, or raise `AdapterError(reason="bad_name")`."""
    if not isinstance(name, str) or not name:
        raise AdapterError("bad_name", "adapter name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise AdapterError("bad_name", f"adapter name is {len(name)} characters long; "
                           f"at most {MAX_NAME_LENGTH} are allowed")
    if not NAME_PATTERN.fullmatch(name):
        raise AdapterError(
            "bad_name",
            f"invalid adapter name {name!r}: use letters, digits, '.', '_', '-' in up to four "
            "'/'-separated segments, each starting with a letter or digit",
        )
    return name


def is_valid_adapter_name(name: str) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and bool(
        NAME_PATTERN.fullmatch(name))
