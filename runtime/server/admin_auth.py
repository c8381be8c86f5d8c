"""Who may use the adapter admin API (`/v1/adapters`).

Loading and unloading adapters changes what a pod serves to everyone, so it is the
operator's API, not a client's: with `admin_token` set (the operator puts it in a Secret)
callers must send `Authorization: Bearer <token>` (401 otherwise); with none set, only
loopback callers are let in (403 for others), which keeps a pod started by hand safe on
a shared network without extra configuration.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request

from loraplex.runtime.server.errors import Forbidden, Unauthorized
from loraplex.runtime.server.state import state_of

BEARER = "bearer "


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_admin_access(admin_token: str, authorization: str | None,
                       client_host: str | None) -> None:
    """Raise `Unauthorized` or `Forbidden` unless the caller may use the admin API."""
    if admin_token:
        given = authorization or ""
        if not given.lower().startswith(BEARER):
            raise Unauthorized("the admin API needs an `Authorization: Bearer <token>` header",
                               headers={"WWW-Authenticate": "Bearer"})
        token = given[len(BEARER):].strip()
        if not hmac.compare_digest(token.encode(), admin_token.encode()):
            raise Unauthorized("wrong admin token", headers={"WWW-Authenticate": "Bearer"})
        return
    if not is_loopback(client_host):
        raise Forbidden("no admin token is configured, so the admin API only answers "
                        "loopback clients; set LORAPLEX_ADMIN_TOKEN to allow remote callers")


async def require_admin(request: Request) -> None:
    """FastAPI dependency guarding every admin route."""
    token = state_of(request).server_config.admin_token
    client = request.client.host if request.client else None
    check_admin_access(token, request.headers.get("authorization"), client)
