"""The README's quick-start snippets, run as written against a real `loraplex serve`.

One server for the module, started with the README's own serve command (the tail of the
first set-up command, checked in tests/unit/test_readme.py). Each snippet runs as written
in bash or Python, in a scratch folder, with one change: `localhost:8080` becomes the
server's loopback address. The server's KV cache is capped through the environment
(`LORAPLEX_KV_CACHE_BYTES`) to spare the test machine's memory, so the command text itself
stays the README's.

The adapter snippets need an engine that serves LoRA adapters; when the server refuses
the registration with "cannot serve LoRA adapters", they are skipped with its answer.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.runtime_servers import RuntimeServer, runtime_server
from tests.unit.test_readme import readme_text, snippets

pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.timeout(300)]
README_ADDRESS = "localhost:8080"
KV_CACHE_BYTES = 256 << 20
SNIPPET_TIMEOUT_S = 180
NO_ENGINE_LORA = "cannot serve LoRA adapters"

Snippet = tuple[str, str]  # (language, code)


@pytest.fixture(scope="module")
def readme_snippets() -> dict[str, Snippet]:
    return snippets(readme_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def readme_server(readme_snippets: dict[str, Snippet], workdir: Path) -> Iterator[RuntimeServer]:
    _, code = readme_snippets["serve"]
    words = shlex.split(code)
    assert words[:2] == ["loraplex", "serve"], code
    env = {"LORAPLEX_KV_CACHE_BYTES": str(KV_CACHE_BYTES), "LORAPLEX_DTYPE": "auto"}  # as typed
    with runtime_server(*words[2:], env=env,
                        log_dir=workdir / "logs") as server:
        yield server


def run_snippet(snippet: Snippet, workdir: Path, server: RuntimeServer | None = None) -> str:
    """Run one snippet as the README shows it; its stdout, or a failure with its stderr."""
    language, code = snippet
    if server is not None:
        if README_ADDRESS not in code:
            raise AssertionError(f"the snippet does not call {README_ADDRESS}:\n{code}")
        code = code.replace(README_ADDRESS, f"{server.host}:{server.port}")
    if language == "bash":
        command = ["bash", "-euo", "pipefail", "-c", code]
    elif language == "python":
        command = [sys.executable, "-c", code]
    else:
        raise AssertionError(f"cannot run a {language!r} snippet")
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env,
                            timeout=SNIPPET_TIMEOUT_S)
    assert result.returncode == 0, f"{language} snippet failed:\n{code}\n{result.stderr}"
    return result.stdout


def test_the_curl_command_answers_paris(readme_snippets, readme_server, workdir) -> None:
    answer = json.loads(run_snippet(readme_snippets["curl-generate"], workdir, readme_server))
    assert "Paris" in answer["generated_text"]


def test_the_lorax_client_snippet_answers_paris(readme_snippets, readme_server,
                                                workdir) -> None:
    assert "Paris" in run_snippet(readme_snippets["lorax-client"], workdir, readme_server)


def test_the_openai_snippet_answers_paris(readme_snippets, readme_server, workdir) -> None:
    assert "Paris" in run_snippet(readme_snippets["openai"], workdir, readme_server)


def test_the_adapter_snippets_register_and_use_an_adapter(readme_snippets, readme_server,
                                                          workdir) -> None:
    folder = Path(run_snippet(readme_snippets["make-adapter"], workdir).strip())
    assert (workdir / folder).resolve() == (workdir / "my-lora").resolve()
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        path.name for path in (workdir / folder).iterdir()}

    registered, listing = (json.loads(line) for line in run_snippet(
        readme_snippets["register-adapter"], workdir, readme_server).splitlines())
    if NO_ENGINE_LORA in str(registered.get("error", "")):
        pytest.skip(f"the server's engine has no adapter support yet: {registered}")
    assert registered["name"] == "my-lora", registered
    assert registered["state"] in ("downloading", "disk", "host", "device"), registered
    assert registered["source"].endswith("my-lora")
    assert "my-lora" in {entry["name"] for entry in listing["adapters"]}

    answer = json.loads(run_snippet(readme_snippets["curl-adapter"], workdir, readme_server))
    base = httpx.post(f"{readme_server.url}/generate", timeout=120, json={
        "inputs": "Tell me a story.", "parameters": {"max_new_tokens": 20}}).json()
    assert answer["generated_text"] != base["generated_text"], "the adapter changed nothing"

    printed = run_snippet(readme_snippets["clients-adapter"], workdir, readme_server)
    assert printed.startswith(answer["generated_text"] + "\n")  # same greedy request
