"""One batch of concurrent `/generate` requests through a real `loraplex serve`, timed.

`bench.adapters` measures the engine in process; a user meets it through HTTP: the
server's tokenizer, JSON, the event loop and the hand-off to the engine thread. This
module starts `loraplex serve` on loopback (a free port), registers adapters with
`preload: device` and waits until every one is on the device (an idle server moves device
preloads on by itself; `check_on_device` confirms they are still there after the caller's
warm-up); `time_batch` sends all requests of a batch at once (one
connection each) and returns the seconds until the last answer. Every answer must carry
exactly the requested number of tokens (EOS is ignored), so both sides of a comparison
generate the same work.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from loraplex.contracts.adapters import (
    AdapterList,
    AdapterRegistration,
    AdapterState,
    Preload,
)
from tests.integration.runtime_servers import RuntimeServer, start_runtime_server

LOAD_TIMEOUT_S = 600.0


class ServedBatch:
    """A `loraplex serve` process for the bench; `close()` stops it."""

    def __init__(self, *serve_args: str, env: dict[str, str] | None = None) -> None:
        self.server: RuntimeServer = start_runtime_server(*serve_args, env=env)
        self.url = self.server.url

    def close(self) -> None:
        self.server.stop()

    def register(self, adapters: dict[str, Path]) -> None:
        """PUT each adapter (name -> folder) with preload to the device; wait until there."""
        with httpx.Client(timeout=60, trust_env=False) as http:
            for name, folder in adapters.items():
                body = AdapterRegistration(source=str(folder), preload=Preload.DEVICE)
                http.put(f"{self.url}/v1/adapters/{name}",
                         json=body.wire_body()).raise_for_status()
            deadline = time.monotonic() + LOAD_TIMEOUT_S
            while time.monotonic() < deadline:
                listing = AdapterList.model_validate_json(
                    http.get(f"{self.url}/v1/adapters").content).by_name()
                failed = [name for name in adapters if listing[name].failed]
                if failed:
                    raise RuntimeError(f"adapters failed to load: {failed}")
                if all(listing[name].state is AdapterState.DEVICE for name in adapters):
                    return
                time.sleep(0.2)
        raise RuntimeError("adapters still loading after the timeout")

    def check_on_device(self, names: list[str]) -> None:
        with httpx.Client(timeout=60, trust_env=False) as http:
            listing = AdapterList.model_validate_json(
                http.get(f"{self.url}/v1/adapters").content).by_name()
        elsewhere = [name for name in names if listing[name].state is not AdapterState.DEVICE]
        if elsewhere:
            raise RuntimeError(f"adapters not on the device: {elsewhere}")

    def time_batch(self, texts: list[str], adapters: list[str | None], new_tokens: int
                   ) -> float:
        """Seconds from sending every request at once to the last answer."""
        return asyncio.run(self._time_batch(texts, adapters, new_tokens))

    async def _time_batch(self, texts: list[str], adapters: list[str | None],
                          new_tokens: int) -> float:
        limits = httpx.Limits(max_connections=len(texts) + 4)
        async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as http:
            started = time.perf_counter()
            counts = await asyncio.gather(*(
                self._generate(http, text, adapter, new_tokens)
                for text, adapter in zip(texts, adapters, strict=True)))
            elapsed = time.perf_counter() - started
        wrong = [count for count in counts if count != new_tokens]
        if wrong:
            raise RuntimeError(f"answers with {wrong[:3]} tokens, expected {new_tokens}")
        return elapsed

    async def _generate(self, http: httpx.AsyncClient, text: str, adapter: str | None,
                        new_tokens: int) -> int:
        parameters = {"max_new_tokens": new_tokens, "ignore_eos_token": True,
                      "details": True, "adapter_id": adapter}
        response = await http.post(f"{self.url}/generate",
                                   json={"inputs": text, "parameters": parameters})
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return response.json()["details"]["generated_tokens"]
