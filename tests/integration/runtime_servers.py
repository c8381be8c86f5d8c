"""Start real `loraplex serve` pods on loopback for tests, and stop them for sure.

A plain importable helper (no pytest in it) so that every suite can run real pods the
same way: the server's own tests, the router's and the operator's (which bind pods to
distinct loopback addresses such as 127.0.0.2:8080).

    with runtime_server("--max-num-seqs", "4") as pod:
        httpx.get(pod.url + "/info")

The process's output goes to a log file (never a pipe that could fill up and stall it);
`log_text()` reads it, and a start that fails raises with the log's tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

DEFAULT_READY_TIMEOUT_S = 300.0
# servers compute in the oracles' precision (transformers and PEFT in fp32) unless a test
# passes LORAPLEX_DTYPE itself; `auto` would pick bf16 on a CPU with native bf16
ORACLE_ENV = {"LORAPLEX_DTYPE": "float32"}
LOG_TAIL_CHARS = 4000


class ServerStartError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class RuntimeServer:
    host: str
    port: int
    process: subprocess.Popen
    log_path: Path
    args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def is_running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Poll `/ready` until 200; raise `ServerStartError` if the process dies or times out."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.is_running():
                    raise ServerStartError(f"loraplex serve exited with {self.process.returncode}"
                                           f":\n{self.log_text()[-LOG_TAIL_CHARS:]}")
                try:
                    if client.get(self.url + "/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise ServerStartError(f"{self.url} not ready after {timeout_s:.0f} s:\n"
                               f"{self.log_text()[-LOG_TAIL_CHARS:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send `sig`, wait for the exit status (SIGKILL after `timeout_s`), return it."""
        if self.is_running():
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def start_runtime_server(*args: str, host: str = "127.0.0.1", port: int | None = None,
                         env: dict[str, str] | None = None, log_dir: str | Path | None = None,
                         wait: bool = True,
                         ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> RuntimeServer:
    """Start `loraplex serve ARGS` on `host:port` (a free port if none), in fp32 unless `env`
    or ARGS say otherwise, and, unless `wait=False`, wait until it is ready. The caller must
    `stop()` it."""
    port = port or free_port(host)
    log_folder = Path(log_dir or tempfile.mkdtemp(prefix="loraplex-serve-"))
    log_folder.mkdir(parents=True, exist_ok=True)
    log_path = log_folder / f"serve-{host}-{port}.log"
    command = [sys.executable, "-m", "loraplex.cli", "serve", "--host", host,
               "--port", str(port), *args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env={**os.environ, **ORACLE_ENV, **(env or {})})
    server = RuntimeServer(host, port, process, log_path, tuple(args))
    if wait:
        try:
            server.wait_ready(ready_timeout_s)
        except BaseException:
            server.stop(signal.SIGKILL)
            raise
    return server


@contextmanager
def runtime_server(*args: str, **options) -> Iterator[RuntimeServer]:
    """`start_runtime_server` as a context manager that always stops the process."""
    server = start_runtime_server(*args, **options)
    try:
        yield server
    finally:
        server.stop()
