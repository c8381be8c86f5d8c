"""`loraplex router`: serves `RouterService` until SIGTERM or SIGINT, then drains.

On a signal the listening socket closes at once (Kubernetes has already taken the pod out
of the Service) and requests in flight get `shutdown_grace_s` to finish. Imports no torch:
the router image and the operator's test process stay small.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from loraplex.router.app import RouterService
from loraplex.router.config import RouterConfig

log = logging.getLogger("loraplex.router")


async def serve(config: RouterConfig, started: asyncio.Event | None = None) -> None:
    """Run until a stop signal; `started` is set once the socket listens."""
    service = RouterService(config)
    runner = web.AppRunner(service.application(), handler_cancellation=True,
                           shutdown_timeout=config.shutdown_grace_s, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        log.info("router listening on %s:%d, pods %s, placements %s", config.host,
                 config.port, config.pods or "-", config.placements_file
                 or config.placements_configmap or "-")
        if started is not None:
            started.set()
        await stop.wait()
        log.info("stopping: draining requests in flight (up to %.0f s)",
                 config.shutdown_grace_s)
    finally:
        await runner.cleanup()


def run(config: RouterConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except ValueError as error:
        log.error("%s", error)
        return 2
    except OSError as error:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, error)
        return 1
    return 0
