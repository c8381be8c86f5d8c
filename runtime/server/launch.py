"""`loraplex serve`: start HTTP at once, load the model behind it, drain on SIGTERM.

Order of a pod's life: the HTTP server listens immediately (`/health` 200, `/ready` 503)
while the model loads in the background, with a progress line every few seconds; then
the start-up adapters are registered and `/ready` turns 200. On SIGTERM the pod stops
admitting work (`/ready` and new requests 503), lets in-flight requests finish for up to
`shutdown_grace_s`, then ends the rest with a word: every open stream gets a last
`incomplete_generation` event and every request waiting for its whole answer a 503 with
a JSON body, before the server closes connections (uvicorn's own close timeout only
starts after that). Then it stops the engine and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from types import FrameType

import uvicorn
from fastapi import FastAPI

from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.runtime.heap import release_freed_heap
from loraplex.runtime.server.app import create_app
from loraplex.runtime.server.engine_client import EngineClient
from loraplex.runtime.server.startup_adapters import StartupAdapter, startup_adapters
from loraplex.runtime.server.state import Phase, ServerState
from loraplex.runtime.torch_threads import in_passing_thread

log = logging.getLogger("loraplex.server")

PROGRESS_EVERY_S = 5.0
FINAL_WORDS_S = 5.0  # after the grace period, for handlers to send their last event
FINAL_CLOSE_TIMEOUT_S = 5  # then uvicorn's, for connections still open


def configure_logging(level: str) -> None:
    """Plain lines on stderr; the access log is already JSON, so it is written as is."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]
    access = logging.getLogger("loraplex.access")
    access_handler = logging.StreamHandler(sys.stderr)
    access_handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [access_handler]
    access.propagate = False


async def _build_engine(config: EngineConfig) -> EngineClient:
    from loraplex.runtime.engine.async_engine import AsyncEngine

    engine = await in_passing_thread(AsyncEngine.from_config, config)
    await engine.start()
    return engine


def _register(engine: EngineClient, adapters: list[StartupAdapter]) -> None:
    for adapter in adapters:
        try:
            engine.adapters.register(adapter.name, adapter.source, pinned=adapter.pinned,
                                     preload=adapter.preload)
            log.info("registered adapter %s from %s", adapter.name, adapter.source)
        except ValueError as error:  # a bad adapter must not stop the pod
            log.error("cannot register adapter %s: %s", adapter.name, error)


async def _report_progress(started: float) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        log.info("still loading the model (%.0f s)", time.perf_counter() - started)


async def load(state: ServerState, adapters: list[StartupAdapter], server: DrainingServer
               ) -> None:
    """Load the engine, register start-up adapters, then mark the pod ready."""
    config = state.engine_config
    log.info("loading model %s (dtype %s, device %s)", config.model, config.dtype, config.device)
    started = time.perf_counter()
    progress = asyncio.ensure_future(_report_progress(started))
    try:
        engine = await _build_engine(config)
    except Exception as error:
        log.exception("model loading failed")
        state.phase = Phase.FAILED
        state.failure = f"{type(error).__name__}: {error}"
        server.should_exit = True
        return
    finally:
        progress.cancel()
    state.engine = engine
    _register(engine, adapters)
    state.attach(engine)
    release_freed_heap()  # what loading on its own thread and attaching left in the arenas
    log.info("model %s loaded in %.1f s; ready on %s:%d", state.model_id,
             time.perf_counter() - started, state.server_config.host, state.server_config.port)


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT draining in-flight work before the usual shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in `_captured_signals`: uvicorn would re-raise it after shutdown,
        # and the default SIGTERM action would turn our exit status 0 into a kill.
        if self._draining or self.loop is None or self.state.phase is not Phase.READY:
            if self._draining:
                self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.drain()))

    async def drain(self) -> None:
        state = self.state
        grace = state.server_config.shutdown_grace_s
        state.start_draining()
        log.info("shutting down: %d sequences in flight, waiting up to %.0f s",
                 state.gate.in_flight, grace)
        if not await state.gate.wait_idle(grace):
            count = state.engine.interrupt_all("the server is shutting down")
            log.warning("grace period over with %d sequences in flight; ended %d requests "
                        "with incomplete_generation", state.gate.in_flight, count)
            if not await state.gate.wait_idle(FINAL_WORDS_S):
                log.warning("%d sequences still in flight after their last event",
                            state.gate.in_flight)
        self.should_exit = True


def build_server(state: ServerState, adapters: list[StartupAdapter]) -> DrainingServer:
    server: DrainingServer

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.loop = asyncio.get_running_loop()
        loading = asyncio.ensure_future(load(state, adapters, server))
        try:
            yield
        finally:
            loading.cancel()
            with suppress(asyncio.CancelledError):
                await loading
            if state.engine is not None:
                await state.engine.stop()
                log.info("engine stopped")

    app = create_app(state, lifespan=lifespan)
    config = uvicorn.Config(app, host=state.server_config.host, port=state.server_config.port,
                            log_level=state.server_config.log_level, access_log=False,
                            timeout_graceful_shutdown=FINAL_CLOSE_TIMEOUT_S, log_config=None,
                            limit_concurrency=state.server_config.max_connections or None)
    server = DrainingServer(config, state)
    return server


def serve(engine_config: EngineConfig, server_config: ServerConfig) -> int:
    """Run a runtime pod until SIGTERM; 0 after a clean drain, 1 if the model failed to
    load, 2 for a bad start-up adapter list."""
    configure_logging(server_config.log_level)
    try:
        adapters = startup_adapters(server_config)
    except ValueError as error:
        log.error("%s", error)
        return 2
    state = ServerState(engine_config, server_config)
    build_server(state, adapters).run()
    return 1 if state.phase is Phase.FAILED else 0

