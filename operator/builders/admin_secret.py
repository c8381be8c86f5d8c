"""The admin token Secret: the bearer token runtime pods require on /v1/adapters.

A fresh random token is built for each call; reconcile only ever *creates* this Secret
(never patches it), so the token is made once and never rotated behind the pods' back.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from loraplex.operator import naming
from loraplex.operator.builders.meta import Owner, child_metadata

TOKEN_BYTES = 32


def build_admin_secret(owner: Owner) -> dict[str, Any]:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": child_metadata(owner, naming.admin_secret_name(owner.name),
                                   naming.COMPONENT_RUNTIME),
        "data": {naming.ADMIN_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def read_admin_token(secret: dict[str, Any]) -> str:
    """The token from a Secret body as the API returns it (base64 `data`)."""
    encoded = (secret.get("data") or {}).get(naming.ADMIN_TOKEN_KEY)
    if not encoded:
        raise ValueError(f"Secret {secret.get('metadata', {}).get('name')!r} has no "
                         f"{naming.ADMIN_TOKEN_KEY!r} key")
    return base64.b64decode(encoded).decode()
