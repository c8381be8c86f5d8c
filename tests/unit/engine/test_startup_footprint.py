"""What a server start-up costs beside the weights: the precision `auto` picks, the
tokenizer class, and which heavy libraries a start-up imports.

A CPU pod's resident memory is mostly imports and weights. Three imports are avoidable:
`AutoTokenizer` pulls in transformers' generation stack (dynamo, accelerate, boto3), a
module built on the meta device with its random init pulls in torch's compiler (dynamo,
inductor, triton), and xgrammar (25 MB) is needed only once a request asks for structured
output. A start-up must not import them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from loraplex.runtime.models.device import resolve_dtype
from loraplex.runtime.models.loader import load_tokenizer
from tests.helpers import BUILTIN_MODEL, builtin_folder, cache_dir

CPUINFO = Path("/proc/cpuinfo")
TEXTS = ["Hello world", "  leading spaces and émojis 🙂", "<|im_start|>user\nhi<|im_end|>"]
COMPILER_AND_GENERATION = ("torch._dynamo", "torch._inductor", "triton", "accelerate", "boto3",
                           "transformers.generation.utils", "xgrammar")


def cpu_flags() -> set[str]:
    for line in CPUINFO.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not CPUINFO.is_file(), reason="reads the CPU's flags from /proc/cpuinfo")
def test_auto_dtype_is_bf16_exactly_where_the_cpu_computes_it() -> None:
    native = bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


def assert_same_tokenizer(folder: Path) -> None:
    ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert type(ours) is type(theirs)
    for text in TEXTS:
        assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    chat = [{"role": "user", "content": "What is 2+2?"}]
    assert (ours.apply_chat_template(chat, add_generation_prompt=True)
            == theirs.apply_chat_template(chat, add_generation_prompt=True))
    assert (ours.eos_token_id, ours.bos_token_id) == (theirs.eos_token_id, theirs.bos_token_id)


@pytest.mark.model
def test_the_tokenizer_is_the_one_auto_tokenizer_chooses(tmp_path: Path) -> None:
    assert_same_tokenizer(builtin_folder())
    unnamed = tmp_path / "unnamed"  # no tokenizer_class: transformers chooses
    unnamed.mkdir()
    for path in builtin_folder().iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy(path, unnamed / path.name)
    config = json.loads((unnamed / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (unnamed / "tokenizer_config.json").write_text(json.dumps(config))
    assert_same_tokenizer(unnamed)


STARTUP = f"""
import sys
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
engine = Engine(EngineConfig(model={BUILTIN_MODEL!r}, cache_dir={{cache!r}}, device="cpu",
                             dtype="bfloat16", quantize="int4", kv_cache_bytes=16 << 20))
engine.close()
print([name for name in {COMPILER_AND_GENERATION!r} if name in sys.modules])
"""


@pytest.mark.model
def test_a_server_start_up_imports_no_compiler_or_generation_stack() -> None:
    builtin_folder()  # converted once here: a conversion itself needs transformers' models
    code = STARTUP.replace("{cache!r}", repr(cache_dir()))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]
