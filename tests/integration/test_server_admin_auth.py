"""Who may use the admin API: token when set, loopback only when not.

The real application is driven in-process through httpx's ASGI transport, which lets a
test choose the caller's address (a non-loopback one cannot be had on a CI machine's
loopback interface). No engine is attached, so a caller who gets past the guard meets
503 "still loading" instead of 401/403: exactly what tells the two apart.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.runtime.server.admin_auth import check_admin_access, is_loopback
from loraplex.runtime.server.app import create_app
from loraplex.runtime.server.errors import Forbidden, Unauthorized
from loraplex.runtime.server.state import ServerState

REMOTE = ("10.1.2.3", 40000)
LOOPBACK = ("127.0.0.1", 40000)


def call(admin_token: str, client: tuple[str, int], method: str, path: str,
         headers: dict[str, str] | None = None) -> httpx.Response:
    app = create_app(ServerState(EngineConfig(), ServerConfig(admin_token=admin_token)))

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as http:
            return await http.request(method, path, headers=headers,
                                      json={"source": "/tmp/x"} if method == "PUT" else None)

    return asyncio.run(send())


@pytest.mark.parametrize("method,path", [("GET", "/v1/adapters"), ("GET", "/v1/adapters/a"),
                                         ("PUT", "/v1/adapters/a"),
                                         ("DELETE", "/v1/adapters/a")])
def test_without_token_remote_callers_get_403_and_loopback_ones_pass(method: str,
                                                                      path: str) -> None:
    remote = call("", REMOTE, method, path)
    assert remote.status_code == 403
    assert "loopback" in remote.json()["error"]
    assert remote.json()["error_type"] == "forbidden"
    assert call("", LOOPBACK, method, path).status_code == 503  # past the guard


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic c2VjcmV0"},
                                     {"Authorization": "Bearer "}])
def test_with_token_missing_or_wrong_credentials_get_401_even_from_loopback(headers) -> None:
    response = call("s3cret", LOOPBACK, "GET", "/v1/adapters", headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error_type"] == "unauthorized"


def test_with_token_the_right_one_passes_from_anywhere() -> None:
    headers = {"Authorization": "Bearer s3cret"}
    assert call("s3cret", REMOTE, "GET", "/v1/adapters", headers).status_code == 503
    assert call("s3cret", REMOTE, "GET", "/v1/adapters",
                {"Authorization": "bearer s3cret"}).status_code == 503


def test_inference_routes_are_not_guarded() -> None:
    response = call("s3cret", REMOTE, "GET", "/health")
    assert response.status_code == 200


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.0.0.2", True),
                                           ("::1", True), ("10.0.0.1", False),
                                           ("192.168.1.5", False), ("testclient", False),
                                           (None, False), ("", False)])
def test_is_loopback(host, expected) -> None:
    assert is_loopback(host) is expected


def test_guard_function_directly() -> None:
    check_admin_access("", None, "127.0.0.1")
    check_admin_access("t", "Bearer t", "10.0.0.1")
    with pytest.raises(Forbidden):
        check_admin_access("", "Bearer t", "10.0.0.1")
    with pytest.raises(Unauthorized):
        check_admin_access("t", "Bearer tt", "127.0.0.1")
