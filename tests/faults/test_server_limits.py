"""The server's own limits reach the HTTP layer: body size for FastAPI, connections for
uvicorn, and bad values are refused when the settings are read."""

from __future__ import annotations

import pytest

from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.runtime.server.launch import build_server
from loraplex.runtime.server.state import ServerState


def test_connection_and_body_limits_are_passed_on() -> None:
    state = ServerState(EngineConfig(), ServerConfig(max_connections=40,
                                                     max_request_bytes=1 << 20))
    server = build_server(state, [])
    assert server.config.limit_concurrency == 40
    assert server.config.app.max_body_size == 1 << 20
    assert build_server(ServerState(EngineConfig(), ServerConfig()), []).config \
        .limit_concurrency is None


@pytest.mark.parametrize(("field", "value"), [("max_connections", -1),
                                              ("max_request_bytes", 0)])
def test_bad_limits_are_refused(field, value) -> None:
    with pytest.raises(ValueError, match=field):
        ServerConfig(**{field: value})
