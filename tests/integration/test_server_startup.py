"""Start-up of `loraplex serve`: liveness while loading, readiness after, clear failures."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.integration.runtime_servers import start_runtime_server

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def test_health_answers_while_the_model_loads_then_ready(tmp_path) -> None:
    server = start_runtime_server("--max-model-len", "256", wait=False, log_dir=tmp_path)
    try:
        seen_loading = False
        deadline = time.monotonic() + 240
        with httpx.Client(base_url=server.url, timeout=5) as http:
            while time.monotonic() < deadline:
                try:
                    health = http.get("/health")
                except httpx.TransportError:
                    time.sleep(0.02)
                    continue
                ready = http.get("/ready")
                assert health.status_code == 200
                if ready.status_code == 503:
                    assert ready.json()["status"] == "loading"
                    # one token: admitted if the model became ready meanwhile, and quick
                    refused = http.post("/generate", json={
                        "inputs": "hi", "parameters": {"max_new_tokens": 1}})
                    if refused.status_code == 503:  # still loading when it arrived
                        assert refused.json()["error_type"] == "unavailable"
                        seen_loading = True
                elif ready.status_code == 200:
                    break
                time.sleep(0.02)
        assert seen_loading, "the HTTP server only answered once the model was loaded"
        assert "loading model builtin:smollm2-135m-instruct" in server.log_text()
        assert "ready on" in server.log_text()
    finally:
        assert server.stop(signal.SIGTERM) == 0


def test_a_model_that_cannot_load_exits_1(tmp_path) -> None:
    server = start_runtime_server("--model", str(tmp_path / "no-such-model"), wait=False,
                                  log_dir=tmp_path)
    assert server.process.wait(120) == 1
    assert "model loading failed" in server.log_text()


def test_a_bad_adapters_file_exits_2_before_loading(tmp_path) -> None:
    adapters_file = tmp_path / "adapters.yaml"
    adapters_file.write_text("- name: a\n  sorce: /x\n")
    result = subprocess.run([sys.executable, "-m", "loraplex.cli", "serve", "--adapters-file",
                             str(adapters_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown keys ['sorce']" in result.stderr
    assert "loading model" not in result.stderr


@pytest.mark.parametrize("text,error", [
    ("[1, 2]", "must be a mapping"),
    ("- {name: a}", "non-empty strings"),
    ("- {name: a, source: /x, preload: gpu}", "preload"),
    ("- {name: a, source: /x, pinned: 'yes'}", "pinned"),
    ("name: a", "expected a list"),
    ("- {name: a, source: /x}\n- {name: a, source: /y}", "listed twice"),
    ("[unclosed", "cannot read"),
])
def test_adapters_file_errors_name_the_problem(tmp_path, text, error) -> None:
    from loraplex.runtime.config import ServerConfig
    from loraplex.runtime.server.startup_adapters import startup_adapters

    path = tmp_path / "adapters.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        startup_adapters(ServerConfig(adapters_file=str(path)))


def test_adapters_from_flags_and_file(tmp_path) -> None:
    from loraplex.runtime.config import ServerConfig
    from loraplex.runtime.server.startup_adapters import StartupAdapter, startup_adapters

    path = tmp_path / "adapters.yaml"
    path.write_text("adapters:\n  - {name: b, source: s3://bucket/b, pinned: true, "
                    "preload: device}\n")
    found = startup_adapters(ServerConfig(adapter=["a=/models/a"], adapters_file=str(path)))
    assert found == [StartupAdapter("a", "/models/a"),
                     StartupAdapter("b", "s3://bucket/b", True, "device")]
