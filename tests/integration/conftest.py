"""Fixtures for tests that talk to real runtime pods over loopback.

One session-scoped pod on the builtin SmolLM2 serves most server tests (two synthetic
adapters registered at start: `alpha` by flag, `beta` pinned from a YAML file, admin
token from the environment). The oracles are independent of the server: Hugging Face
transformers for the base model and PEFT for adapters, both run greedily here in the
test process. Heavy imports (torch, the runtime) happen inside the fixtures, so suites in
this folder that use none of them (the operator's) do not pay for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.runtime_servers import RuntimeServer, runtime_server

ADMIN_TOKEN = "integration-admin-token"
MAX_MODEL_LEN = 512
ADAPTER_RANKS = {"alpha": 8, "beta": 16}
CHAT_PROMPT = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
               "<|im_start|>assistant\n")

Greedy = Callable[[list[int], int], list[int]]


@pytest.fixture(scope="session")
def adapter_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.models.shapes import shape_config

    target = LoraTargetShapes.from_hf_config(shape_config("smollm2-135m"))
    root = tmp_path_factory.mktemp("adapters")
    return {name: write_random_adapter(root / name, target, rank, seed=index + 1)
            for index, (name, rank) in enumerate(ADAPTER_RANKS.items())}


@pytest.fixture(scope="session")
def server(adapter_folders: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeServer]:
    folder = tmp_path_factory.mktemp("pod")
    adapters_file = folder / "adapters.yaml"
    adapters_file.write_text(yaml.safe_dump([{"name": "beta",
                                              "source": str(adapter_folders["beta"]),
                                              "pinned": True, "preload": "device"}]))
    with runtime_server("--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", "8",
                        "--adapter", f"alpha={adapter_folders['alpha']}",
                        "--adapters-file", str(adapters_file), log_dir=folder,
                        env={"LORAPLEX_ADMIN_TOKEN": ADMIN_TOKEN}) as pod:
        yield pod


@pytest.fixture(scope="session")
def http(server: RuntimeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
        yield client


@pytest.fixture(scope="session")
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="session")
def model_folder() -> Path:
    from loraplex.runtime.config import DEFAULT_MODEL, default_cache_dir
    from loraplex.runtime.models.builtin import resolve_builtin

    return resolve_builtin(DEFAULT_MODEL, default_cache_dir())


@pytest.fixture(scope="session")
def tokenizer(model_folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_folder)


def _load_base(model_folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_folder, torch_dtype=torch.float32).eval()


def _greedy_with(model) -> Greedy:
    """Greedy decoding that ignores EOS: the oracle for `ignore_eos_token` requests.

    Results are kept per prompt (a greedy continuation's prefix is the shorter one), and
    the loop uses the model's KV cache, so repeated questions cost nothing.
    """
    import torch

    known: dict[tuple[int, ...], list[int]] = {}

    def greedy(prompt_ids: list[int], num_tokens: int) -> list[int]:
        done = known.get(tuple(prompt_ids), [])
        if len(done) < num_tokens:
            done, past = [], None
            step_input = torch.tensor([prompt_ids])
            with torch.no_grad():
                for _ in range(num_tokens):
                    output = model(step_input, past_key_values=past, use_cache=True)
                    past = output.past_key_values
                    done.append(int(output.logits[0, -1].argmax()))
                    step_input = torch.tensor([[done[-1]]])
            known[tuple(prompt_ids)] = done
        return done[:num_tokens]
    return greedy


@pytest.fixture(scope="session")
def hf_greedy(model_folder: Path) -> Greedy:
    return _greedy_with(_load_base(model_folder))


@pytest.fixture(scope="session")
def peft_greedy(model_folder: Path, adapter_folders: dict[str, Path]
                ) -> Callable[[str], Greedy]:
    """`peft_greedy(adapter_name)(prompt_ids, n)`: PEFT's greedy tokens with that adapter."""
    from peft import PeftModel

    cache: dict[str, Greedy] = {}

    def for_adapter(name: str) -> Greedy:
        if name not in cache:
            model = PeftModel.from_pretrained(_load_base(model_folder), adapter_folders[name])
            cache[name] = _greedy_with(model.eval())
        return cache[name]
    return for_adapter


@pytest.fixture
def compiled_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row count of each compiled decode call (`cpu_decoder.run_layers`) from now on."""
    from loraplex.runtime.kernels import cpu_decoder

    seen: list[int] = []
    run = cpu_decoder.run_layers
    monkeypatch.setattr(cpu_decoder, "run_layers",
                        lambda hidden, *args: seen.append(hidden.shape[0]) or run(hidden, *args))
    return seen
