"""`load_model`: from an `EngineConfig` to a model on its device, ready to serve.

Resolves the source (builtin, folder, GGUF, hub, or a dummy shape), builds our
Llama-family module without initializing it (meta device, then materialized where it
runs), fills it from the checkpoint or with random weights, and gathers what the engine
and the HTTP layer need beside the module: tokenizer, context length, EOS ids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from loraplex.runtime.config import EngineConfig
from loraplex.runtime.heap import release_freed_heap
from loraplex.runtime.layers.quantized_embedding import QuantizedEmbedding
from loraplex.runtime.models.builtin import (
    BUILTIN_PREFIX,
    builtin_gguf_path,
    resolve_builtin,
    resolve_builtin_tokenizer,
)
from loraplex.runtime.models.checkpoint import (
    init_dummy_weights,
    iter_checkpoint,
    safetensors_files,
)
from loraplex.runtime.models.device import resolve_device, resolve_dtype
from loraplex.runtime.models.gguf_quantized import use_gguf_blocks
from loraplex.runtime.models.llama import LlamaForCausalLM, check_supported
from loraplex.runtime.models.quantized_checkpoint import (
    Quantization,
    load_quantized_linears,
    quantization_of,
)
from loraplex.runtime.models.shapes import SHAPES, SMOLLM2_TOKENIZER, shape_config
from loraplex.runtime.models.sources import resolve_model_folder

__all__ = ["LoadedModel", "load_model", "resolve_builtin"]

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    hf_config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    model_id: str  # the name shown to clients
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    eos_token_ids: tuple[int, ...]
    folder: Path | None = None  # the Hugging Face folder the weights came from
    quantization: str = "none"  # --quantize as applied, or the checkpoint's (gptq, awq)
    weight_bytes: int = 0  # the weights as served (packed, quantized or plain)

    @property
    def num_parameters(self) -> int:
        """Parameters of the checkpoint (a released or quantized weight still counts)."""
        counted = {id(p): p.numel() for p in self.model.parameters()}
        for module in self.model.own_linears():
            if module.weight is None:
                counted[id(module)] = module.in_features * module.out_features
        embedding = self.model.model.embed_tokens
        if isinstance(embedding, QuantizedEmbedding) and not self.hf_config.tie_word_embeddings:
            counted[id(embedding)] = embedding.num_embeddings * embedding.embedding_dim
        return sum(counted.values())


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def _no_parameter_init() -> Iterator[None]:
    """Module constructors skip their random init (the weights are loaded right after).

    On the meta device the init is pointless, and its first call imports torch's compiler
    stack (dynamo, sympy, triton: 155 MB resident in a CPU server that never compiles).
    transformers' `no_init_weights` does the same for its models.
    """
    names = ("kaiming_uniform_", "uniform_", "normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    for name in names:
        setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def build_model(hf_config: PretrainedConfig, dtype: torch.dtype, device: torch.device,
                prepare: Callable[[LlamaForCausalLM], object] | None = None
                ) -> LlamaForCausalLM:
    """An uninitialized model in `dtype` on `device` (no time spent on random init).
    `prepare` sees it on the meta device first: weights it releases never take memory."""
    check_supported(hf_config)
    with _default_dtype(dtype), torch.device("meta"), _no_parameter_init():
        model = LlamaForCausalLM(hf_config)
    if prepare is not None:
        prepare(model)
    model = model.to_empty(device=device)
    model.tie_weights()
    model.reset_buffers()
    return model.eval()


def context_length(hf_config: PretrainedConfig, requested: int) -> int:
    native = hf_config.max_position_embeddings
    window = getattr(hf_config, "sliding_window", None)
    uses_window = getattr(hf_config, "use_sliding_window", True)
    if window and uses_window and window < native:
        native = window  # attention here is full, so stay inside the window
    if requested > native:
        raise ValueError(f"max_model_len {requested} exceeds the model's context {native}")
    return requested or native


def eos_ids(hf_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase,
            folder: Path | None) -> tuple[int, ...]:
    """EOS ids of the generation config (as `generate` uses them), config and tokenizer."""
    ids: list[int] = []
    candidates: list[object] = [hf_config.eos_token_id, tokenizer.eos_token_id]
    if folder is not None and (folder / "generation_config.json").is_file():
        candidates.insert(0, GenerationConfig.from_pretrained(folder).eos_token_id)
    for candidate in candidates:
        for token_id in candidate if isinstance(candidate, list | tuple) else [candidate]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    return tuple(ids)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, as `AutoTokenizer` would choose it.

    A folder with `tokenizer.json` that names its class is loaded by that class's fast
    version directly: importing `AutoTokenizer` pulls in transformers' whole generation
    stack (dynamo, accelerate, boto3: 126 MB resident in a server that never uses it).
    """
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"model folder {folder} has no tokenizer "
                         f"(none of {', '.join(TOKENIZER_FILES)})")
    named = _named_fast_tokenizer(folder)
    if named is not None:
        tokenizer = named.from_pretrained(folder)
    else:
        from transformers import AutoTokenizer  # any other folder: let transformers choose

        tokenizer = AutoTokenizer.from_pretrained(folder)
    _never_reconfigured(tokenizer)
    return tokenizer


def _never_reconfigured(tokenizer: PreTrainedTokenizerBase) -> None:
    """Clear the padding and truncation a `tokenizer.json` may carry.

    The HTTP threads encode and the engine thread decodes through one Rust tokenizer
    (a second copy would hold 11 MB). Reading it from several threads is safe; changing it
    is not (the others fail with "Already borrowed"), and transformers changes it on a
    call whose padding or truncation differs from the tokenizer's own. Ours never pad
    or truncate, so once both are cleared here no call changes it again.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return  # a slow (pure Python) tokenizer holds no Rust state
    backend.no_padding()
    backend.no_truncation()


def _named_fast_tokenizer(folder: Path) -> type[PreTrainedTokenizerBase] | None:
    """The fast class `tokenizer_config.json` names, when `tokenizer.json` is there."""
    config_path = folder / "tokenizer_config.json"
    if not (folder / "tokenizer.json").is_file() or not config_path.is_file():
        return None
    name = json.loads(config_path.read_text()).get("tokenizer_class")
    if not isinstance(name, str) or not name:
        return None
    fast_name = name if name.endswith("Fast") else f"{name}Fast"
    try:
        return getattr(transformers, fast_name)
    except AttributeError:  # a class of the model's own code (trust_remote_code) or unknown
        return None


def _dummy_source(config: EngineConfig) -> tuple[PretrainedConfig, Path, Path | None]:
    """(config, tokenizer folder, weights folder or None) for `--load-format dummy`."""
    source = config.model
    if source in SHAPES:
        return (shape_config(source),
                resolve_builtin_tokenizer(SMOLLM2_TOKENIZER, config.cache_dir), None)
    if source.startswith(BUILTIN_PREFIX):
        folder = resolve_builtin(source, config.cache_dir)
        return AutoConfig.from_pretrained(folder), folder, folder
    folder = Path(source.removeprefix("file://")).expanduser()
    if not (folder / "config.json").is_file():
        raise ValueError(f"dummy model {source!r} is neither a shape ({', '.join(SHAPES)}) "
                         "nor a folder with config.json")
    tokenizer_folder = folder if (folder / "tokenizer.json").is_file() else (
        resolve_builtin_tokenizer(SMOLLM2_TOKENIZER, config.cache_dir))
    return AutoConfig.from_pretrained(folder), tokenizer_folder, folder


def gguf_file(source: str) -> Path:
    """The GGUF file a model source names (for `--quantize gguf`)."""
    if source.startswith(BUILTIN_PREFIX):
        return builtin_gguf_path(source)
    path = Path(source.removeprefix("file://")).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ValueError(f"--quantize gguf serves a GGUF file's own blocks, but the model "
                         f"source {source!r} is not builtin:NAME or a .gguf file")
    return path


def quantize_model(model: LlamaForCausalLM, config: EngineConfig) -> None:
    """Apply `--quantize` to a loaded model (before packing for the CPU)."""
    if config.quantize == "gguf":
        if config.load_format == "dummy":
            raise ValueError("--quantize gguf needs the GGUF's weights, not --load-format dummy")
        served, _ = use_gguf_blocks(model, gguf_file(config.model))
        logger.info("serving %d linear layers from the GGUF's 4-bit blocks", served)
    elif config.quantize != "none":
        layers = model.quantize_weights(config.quantize, config.quantize_group_size)
        logger.info("quantized %d linear layers to %s", layers, config.quantize)


def checkpoint_quantization(hf_config: PretrainedConfig, config: EngineConfig,
                            folder: Path) -> Quantization | None:
    """The checkpoint's own quantization (GPTQ, AWQ, bitsandbytes), refused with
    `--quantize`."""
    quantization = quantization_of(hf_config, folder)
    if quantization is not None and config.quantize != "none":
        raise ValueError(f"the checkpoint is already {quantization.method}-quantized "
                         f"(config.json quantization_config); --quantize {config.quantize} "
                         "applies to full-precision checkpoints: leave it at none")
    return quantization


def load_model(config: EngineConfig) -> LoadedModel:
    started = time.perf_counter()
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    quantization, quantized_tensors = None, set()
    if config.load_format == "dummy":
        hf_config, tokenizer_folder, folder = _dummy_source(config)
    else:
        folder = resolve_model_folder(config.model, config.cache_dir, config.revision)
        safetensors_files(folder)  # refuse a folder without usable weights before any work
        hf_config, tokenizer_folder = AutoConfig.from_pretrained(folder), folder
        quantization = checkpoint_quantization(hf_config, config, folder)
    tokenizer = load_tokenizer(tokenizer_folder)

    def serve_quantized(meta_model: LlamaForCausalLM) -> None:
        quantized_tensors.update(load_quantized_linears(meta_model, folder, device,
                                                        quantization))

    with torch.no_grad():
        model = build_model(hf_config, dtype, device,
                            serve_quantized if quantization is not None else None)
        if config.load_format == "dummy":
            init_dummy_weights(model, config.seed, getattr(hf_config, "initializer_range", 0.02))
        else:
            model.load_weights(iter_checkpoint(folder, device, skip=quantized_tensors))
        quantize_model(model, config)
        model.pack_weights()
    release_freed_heap()  # the full-precision weights that packing or quantizing replaced
    applied = quantization.method if quantization is not None else config.quantize
    loaded = LoadedModel(
        model=model, hf_config=hf_config, tokenizer=tokenizer, model_id=config.model,
        dtype=dtype, device=device, max_model_len=context_length(hf_config,
                                                                 config.max_model_len),
        eos_token_ids=eos_ids(hf_config, tokenizer, folder), folder=folder,
        quantization=applied, weight_bytes=model.weight_bytes())
    logger.info("loaded %s (%s weights, %.1fM parameters, %.0f MB as served, quantization "
                "%s) as %s on %s, context %d, in %.1fs", config.model, config.load_format,
                loaded.num_parameters / 1e6, loaded.weight_bytes / 1e6, applied,
                str(dtype).removeprefix("torch."), device, loaded.max_model_len,
                time.perf_counter() - started)
    return loaded
