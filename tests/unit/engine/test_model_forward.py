"""Our forward pass equals transformers' on small random models of every supported kind.

Each model is a random transformers model saved as a Hugging Face folder and loaded by
our loader; the engine runs several requests together with tiny blocks and a tiny token
budget (so prefill is chunked, reads cached prefixes through block tables, and mixes with
batched decodes). The oracle is transformers' forward over prompt + generated tokens:
our prompt logprobs and the logprob of every generated token must equal its log-softmax.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.engine import Engine
from loraplex.runtime.engine.request import GenerationRequest, SamplingParams
from tests.helpers import builtin_tokenizer, cache_dir

VOCAB = 512
COMMON = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 256, "initializer_range": 0.2, "rms_norm_eps": 1e-5}

CONFIGS = {
    "llama-gqa-tied": lambda: LlamaConfig(**COMMON, tie_word_embeddings=True),
    "llama-biases-mha": lambda: LlamaConfig(**{**COMMON, "num_key_value_heads": 4},
                                            attention_bias=True, mlp_bias=True,
                                            tie_word_embeddings=False),
    "llama3-rope-scaling": lambda: LlamaConfig(
        **COMMON, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama-head-dim": lambda: LlamaConfig(**COMMON, head_dim=32),
    "qwen2-qkv-bias": lambda: Qwen2Config(**COMMON, tie_word_embeddings=True),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
}
PROMPT_LENGTHS = (5, 13, 22, 1, 7, 3, 9, 17, 2, 11)  # two decode groups
NEW_TOKENS = 6


def save_random_model(config, folder):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder, safe_serialization=True)
    builtin_tokenizer().save_pretrained(folder)
    return model


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_logprobs_equal_transformers(name, tmp_path):
    reference = save_random_model(CONFIGS[name](), tmp_path)
    engine = Engine(EngineConfig(model=str(tmp_path), cache_dir=cache_dir(), device="cpu",
                                 dtype="float32", block_size=4, max_num_batched_tokens=7,
                                 kv_cache_bytes=4 << 20))
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=generator).tolist()
               for n in PROMPT_LENGTHS]
    requests = [GenerationRequest(f"r{i}", prompt, SamplingParams(
        max_new_tokens=NEW_TOKENS, ignore_eos=True, prompt_logprobs=True))
        for i, prompt in enumerate(prompts)]
    results = engine.generate(requests)
    for request in requests:
        events = results[request.request_id]
        prompt = request.prompt_token_ids
        generated = [event.token_id for event in events]
        assert len(generated) == NEW_TOKENS
        with torch.inference_mode():
            logits = reference(torch.tensor([prompt + generated])).logits[0]
        expected = torch.log_softmax(logits.float(), dim=-1)
        positions = torch.arange(len(prompt) + NEW_TOKENS - 1)
        targets = torch.tensor(prompt + generated)[1:]
        expected_chosen = expected[positions, targets]  # logprob of each next token
        ours_prompt = [entry.logprob for entry in events[0].prompt_logprobs]
        assert [entry.token_id for entry in events[0].prompt_logprobs] == prompt
        ours = torch.tensor(ours_prompt[1:] + [event.logprob for event in events])
        torch.testing.assert_close(ours, expected_chosen, atol=2e-4, rtol=1e-4)
        # greedy: each generated token is transformers' argmax (where not a near tie)
        decode_rows = expected[len(prompt) - 1: len(prompt) - 1 + NEW_TOKENS]
        top2 = decode_rows.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 1e-3
        assert torch.equal(torch.tensor(generated)[clear], decode_rows.argmax(-1)[clear])
    assert engine.stats().num_free_blocks == engine.stats().num_total_blocks
