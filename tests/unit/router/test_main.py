"""`loraplex router` as a process: it serves, and SIGTERM lets a stream in flight finish
before it exits 0."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import pytest

from tests.unit.router.upstreams import ScriptedPod, closed_port_url, serving, sse_events

pytestmark = pytest.mark.timeout(60)


async def wait_ready(url: str, process: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            if process.returncode is not None:
                raise AssertionError("router exited early: "
                                     + (await process.stderr.read()).decode())
            try:
                async with client.get(url + "/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("router never became ready")


async def test_sigterm_drains_a_stream_in_flight_then_exits_zero():
    pod = ScriptedPod("a")
    port = int(closed_port_url().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}"
    async with serving(pod.app()) as pod_url:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loraplex.cli", "router", "--host", "127.0.0.1", "--port",
            str(port), "--pods", pod_url, "--shutdown-grace-s", "20",
            stderr=asyncio.subprocess.PIPE)
        try:
            await wait_ready(url, process)
            async with aiohttp.ClientSession() as client, client.post(
                    url + "/generate_stream", json={"inputs": "x"}) as response:
                first = await response.content.readuntil(b"\n\n")
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                assert process.returncode is None  # still draining
                with pytest.raises(aiohttp.ClientConnectionError):  # no new requests
                    async with client.get(url + "/health", timeout=aiohttp.ClientTimeout(2)):
                        pass
                pod.stream_gate.set()
                rest = await response.read()
            assert sse_events((first + rest).decode()) == [{"token": 1}, {"token": 2}]
            assert await asyncio.wait_for(process.wait(), 20) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
