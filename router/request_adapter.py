"""Finds the adapter a request asks for, reading only that from its body.

LoRAX routes (`/`, `/generate`, `/generate_stream`, `/embed`, ...) name it in
`parameters.adapter_id`; OpenAI routes name it in `model`. The body itself is forwarded
untouched; a body that is not a JSON object routes as a base-model request, and the pod
answers it with its own 4xx.
"""

from __future__ import annotations

import json

OPENAI_PATHS = frozenset({"/v1/completions", "/v1/chat/completions", "/v1/embeddings"})


def requested_adapter(path: str, body: bytes) -> str | None:
    """The adapter name in `body` for a request to `path`, or None when it names none."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    if path in OPENAI_PATHS:
        name = document.get("model")
    else:
        parameters = document.get("parameters")
        name = parameters.get("adapter_id") if isinstance(parameters, dict) else None
    return name if isinstance(name, str) and name else None
