"""`python -m tests.integration.operator.admin_pod <serve flags>`: a runtime pod's real
HTTP app and real AdapterManager, without a model engine.

Used by the operator scenarios only while `loraplex serve` cannot manage adapters yet
(its engine has no adapter support): the admin API, the adapter loading and validation
(PEFT parsing, rank limits, sizes, digests) are the real ones; only generation is missing,
which the operator never uses (nor /metrics, which needs engine stats). Takes the same
flags as `loraplex serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import types

import uvicorn

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.runtime.models.shapes import shape_config
from loraplex.runtime.server.app import create_app
from loraplex.runtime.server.state import Phase, ServerState
from loraplex.settings import add_settings_arguments, settings_from_namespace

POLL_S = 0.02  # how often the engine loop would advance the manager


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, EngineConfig)
    add_settings_arguments(parser, ServerConfig)
    namespace = parser.parse_args(argv)
    engine_config = settings_from_namespace(EngineConfig, namespace)
    server_config = settings_from_namespace(ServerConfig, namespace)
    manager = AdapterManager(engine_config,
                             LoraTargetShapes.from_hf_config(shape_config(engine_config.model)))
    state = ServerState(engine_config, server_config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def advance() -> None:
            while True:
                manager.poll()
                await asyncio.sleep(POLL_S)

        task = asyncio.create_task(advance())
        # set after create_app: its metrics collector would ask this stand-in for stats
        state.engine = types.SimpleNamespace(adapters=manager)
        state.phase = Phase.READY
        yield
        task.cancel()
        manager.close()

    uvicorn.run(create_app(state, lifespan), host=server_config.host, port=server_config.port,
                log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
