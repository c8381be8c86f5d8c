"""Turn a GGUF file into a normal Hugging Face folder, once.

transformers dequantizes GGUF tensors (`from_pretrained(..., gguf_file=...)`); that takes
seconds, so the result is saved as safetensors and every later start reads the folder.
The tokenizer transformers builds from a GGUF ignores some of the file's own metadata
(it may add a BOS the model was not trained with and name the BOS as EOS), so the saved
tokenizer is corrected from the GGUF's `tokenizer.ggml.*` fields. The folder is then a
faithful oracle too: `AutoModelForCausalLM` and `AutoTokenizer` load it as is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf
import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from loraplex.runtime.models.folder_lock import build_folder_once

logger = logging.getLogger(__name__)

SOURCE_MARKER = "loraplex-source.json"
SPECIAL_TOKEN_FIELDS = {  # tokenizer attribute -> GGUF field with its id
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


def read_tokenizer_metadata(gguf_path: Path) -> dict[str, object]:
    """The GGUF's special-token ids, add-BOS flag and context length (scalars only)."""
    reader = gguf.GGUFReader(gguf_path)
    architecture = reader.fields["general.architecture"].contents()
    names = [*SPECIAL_TOKEN_FIELDS.values(), "tokenizer.ggml.add_bos_token",
             f"{architecture}.context_length"]
    found = {name: reader.fields[name].contents() for name in names if name in reader.fields}
    context_length = found.pop(f"{architecture}.context_length", None)
    if context_length is not None:
        found["context_length"] = context_length
    return found


def _source_identity(gguf_path: Path) -> dict[str, object]:
    return {"gguf": gguf_path.name, "size": gguf_path.stat().st_size}


def _is_converted(folder: Path, gguf_path: Path, required: str) -> bool:
    marker = folder / SOURCE_MARKER
    if not (marker.is_file() and (folder / required).is_file()):
        return False
    return json.loads(marker.read_text()) == _source_identity(gguf_path)


def load_gguf_tokenizer(gguf_path: Path) -> PreTrainedTokenizerBase:
    """transformers' tokenizer for the GGUF, with BOS/EOS/PAD/UNK as the file declares."""
    from transformers import AutoTokenizer  # only for a conversion: see `load_tokenizer`

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    fields = read_tokenizer_metadata(gguf_path)
    for attribute, field in SPECIAL_TOKEN_FIELDS.items():
        if field in fields:
            setattr(tokenizer, attribute, tokenizer.convert_ids_to_tokens(int(fields[field])))
    if "tokenizer.ggml.add_bos_token" in fields and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(fields["tokenizer.ggml.add_bos_token"])
    if "context_length" in fields:
        tokenizer.model_max_length = int(fields["context_length"])
    return tokenizer


def save_tokenizer(gguf_path: Path, folder: Path) -> PreTrainedTokenizerBase:
    tokenizer = load_gguf_tokenizer(gguf_path)
    tokenizer.save_pretrained(folder)
    return tokenizer


def convert_gguf(gguf_path: Path, folder: Path) -> Path:
    """Dequantize `gguf_path` into the Hugging Face folder `folder` unless already done."""

    def build(staging: Path) -> None:
        logger.info("dequantizing %s into %s (once; later starts read the cache)",
                    gguf_path.name, folder)
        from transformers import AutoModelForCausalLM  # only for a conversion

        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = save_tokenizer(gguf_path, staging)
        model.config.bos_token_id = tokenizer.bos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)
        model.save_pretrained(staging, safe_serialization=True)
        (staging / SOURCE_MARKER).write_text(json.dumps(_source_identity(gguf_path)))

    return build_folder_once(folder, build,
                             lambda f: _is_converted(f, gguf_path, "model.safetensors"))


def convert_gguf_tokenizer(gguf_path: Path, folder: Path) -> Path:
    """Only the tokenizer files of `gguf_path` (fast: no tensor is dequantized)."""

    def build(staging: Path) -> None:
        save_tokenizer(gguf_path, staging)
        (staging / SOURCE_MARKER).write_text(json.dumps(_source_identity(gguf_path)))

    return build_folder_once(folder, build,
                             lambda f: _is_converted(f, gguf_path, "tokenizer.json"))
