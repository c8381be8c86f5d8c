"""Model sources: the builtin cache is a normal Hugging Face folder, dummy shapes, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaConfig

from loraplex.runtime.models import gguf
from loraplex.runtime.models.builtin import builtin_gguf_path
from loraplex.runtime.models.gguf import convert_gguf_tokenizer
from loraplex.runtime.models.loader import load_model, resolve_builtin
from tests.helpers import (
    BUILTIN_MODEL,
    builtin_config,
    builtin_folder,
    builtin_loaded,
    builtin_tokenizer,
    cache_dir,
    tiny_llama_config,
)


@pytest.mark.model
def test_builtin_cache_is_a_hugging_face_folder_with_the_original_tokenizer():
    folder = builtin_folder()
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "generation_config.json"} <= {path.name for path in folder.iterdir()}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("Hello world")["input_ids"]
    assert ids[0] != tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS added
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.startswith("<|im_start|>system") and chat.endswith("<|im_start|>assistant\n")
    assert GenerationConfig.from_pretrained(folder).eos_token_id == 2
    assert AutoConfig.from_pretrained(folder).eos_token_id == 2


@pytest.mark.model
def test_a_second_start_reads_the_cache_without_dequantizing(monkeypatch):
    folder = builtin_folder()
    before = (folder / "model.safetensors").stat().st_mtime_ns

    def no_dequantizing(*args, **kwargs):
        raise AssertionError("the GGUF was dequantized again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_dequantizing)
    assert resolve_builtin(BUILTIN_MODEL, cache_dir()) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.model
def test_loaded_builtin_reports_what_the_server_needs():
    loaded = builtin_loaded()
    assert loaded.model_id == BUILTIN_MODEL
    assert loaded.eos_token_ids == (2,)
    assert loaded.max_model_len == 8192
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.tokenizer.chat_template
    with pytest.raises(ValueError, match="exceeds the model's context"):
        load_model(builtin_config(max_model_len=10_000))


def test_tokenizer_only_conversion_has_the_original_special_tokens():
    # the folder dummy shapes use when the builtin was never converted
    folder = convert_gguf_tokenizer(builtin_gguf_path(BUILTIN_MODEL),
                                    Path(cache_dir()) / "tokenizers" / "smollm2-135m-instruct")
    assert (folder / "tokenizer.json").is_file()
    assert not (folder / "model.safetensors").exists()
    marker = json.loads((folder / gguf.SOURCE_MARKER).read_text())
    assert marker["gguf"].endswith(".gguf")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer("Hello world")["input_ids"] == tokenizer.encode("Hello world")
    assert tokenizer.eos_token_id == 2 and tokenizer.bos_token_id == 1
    assert tokenizer.encode("Hello")[0] != 1


def test_tiny_llama_dummy_loads_fast_with_seeded_weights():
    first = load_model(tiny_llama_config(seed=3))
    again = load_model(tiny_llama_config(seed=3))
    other = load_model(tiny_llama_config(seed=4))
    assert first.hf_config.num_hidden_layers == 2 and first.hf_config.hidden_size == 64
    assert first.tokenizer.eos_token_id == 2 and first.eos_token_ids == (2,)
    ids = torch.arange(first.hf_config.vocab_size)
    tables = [m.model.model.embed_tokens(ids) for m in (first, again, other)]
    assert torch.equal(tables[0], tables[1]) and not torch.equal(tables[0], tables[2])


def test_dummy_weights_from_a_config_folder(tmp_path):
    LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=128).save_pretrained(tmp_path)
    loaded = load_model(tiny_llama_config(model=str(tmp_path)))
    assert loaded.hf_config.vocab_size == 300 and loaded.max_model_len == 128
    assert loaded.tokenizer.eos_token == "<|im_end|>"  # the SmolLM2 tokenizer as fallback


@pytest.mark.parametrize("source, message", [
    ("no-such-shape", "neither a shape"),
    ("builtin:nope", "unknown builtin model"),
])
def test_unknown_dummy_names_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        load_model(tiny_llama_config(model=source))


def test_unknown_sources_and_pickle_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a builtin:NAME"):
        load_model(tiny_llama_config(model=str(tmp_path / "missing"), load_format="auto"))
    LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                num_attention_heads=2).save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle"):
        load_model(tiny_llama_config(model=str(tmp_path), load_format="auto"))


def test_checkpoint_with_the_wrong_shape_is_refused(tmp_path):
    from safetensors.torch import save_file

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2,
                         tie_word_embeddings=True)
    config.save_pretrained(tmp_path)
    save_file({"model.embed_tokens.weight": torch.zeros(300, 16)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="has no tokenizer"):
        load_model(tiny_llama_config(model=str(tmp_path), load_format="auto"))
    builtin_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="embed_tokens.weight: checkpoint shape"):
        load_model(tiny_llama_config(model=str(tmp_path), load_format="auto"))


def test_unsupported_architectures_are_refused(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported model type 'gpt2'"):
        load_model(tiny_llama_config(model=str(tmp_path)))
