"""Llama-family decoder (Llama, SmolLM, Mistral, Qwen2) over a paged KV cache.

Written to compute what Hugging Face's `LlamaForCausalLM` computes, operation for
operation, so greedy output matches it token for token in fp32; the differences are in
the layout only: the batch is one flat row list with metadata in `ForwardBatch`, q/k/v
and gate/up are fused projections, and attention reads K/V through block tables. LoRA
deltas are added per projection group right after its base GEMM, from `batch.lora`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from transformers import PretrainedConfig

from loraplex.runtime.kernels import cpu_attention, cpu_decoder, cpu_linear
from loraplex.runtime.layers.attention import PagedAttention
from loraplex.runtime.layers.forward_batch import ForwardBatch
from loraplex.runtime.layers.fused_ops import silu_and_mul
from loraplex.runtime.layers.linear import Linear, MergedLinear
from loraplex.runtime.layers.panel_embedding import Int8PanelEmbedding, PanelEmbedding
from loraplex.runtime.layers.quantized import Int8Weight, int8_kernel
from loraplex.runtime.layers.quantized_embedding import QuantizedEmbedding
from loraplex.runtime.layers.rms_norm import RMSNorm
from loraplex.runtime.layers.rotary import RotaryEmbedding, apply_rotary_qk

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
KVCaches = Sequence[tuple[torch.Tensor, torch.Tensor]]  # per layer: (key, value) caches

# checkpoint projection -> (fused module, part index)
STACKED_PROJECTIONS = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def no_place(name: str) -> ValueError:
    quantized = name.rpartition(".")[2] in ("qweight", "qzeros", "scales", "g_idx")
    hint = (" (a quantized tensor, but config.json has no quantization_config naming its "
            "format)") if quantized else ""
    return ValueError(f"checkpoint tensor {name!r} has no place in the model{hint}")


def head_dim_of(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def check_supported(config: PretrainedConfig) -> None:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported model type {config.model_type!r}; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported activation {config.hidden_act!r} (only silu)")


class Attention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index  # LoRA slot pools are indexed by layer
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = head_dim_of(config)
        attention_bias = getattr(config, "attention_bias", False)
        qkv_bias = attention_bias or config.model_type == "qwen2"
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(config.hidden_size,
                                     (self.q_size, self.kv_size, self.kv_size), bias=qkv_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=attention_bias)
        self.attn = PagedAttention(self.num_heads, self.num_kv_heads, self.head_dim)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: ForwardBatch, kv_cache: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)  # [T, q_size + 2 * kv_size]
        if batch.lora is not None:
            batch.lora.apply(qkv, hidden, self.layer_index, "qkv")
        query, key, value = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        query, key = apply_rotary_qk(query.view(num_tokens, self.num_heads, self.head_dim),
                                     key.view(num_tokens, self.num_kv_heads, self.head_dim),
                                     cos, sin)
        value = value.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        attended = self.attn(query, key, value, batch, *kv_cache)  # [T, q_size]
        output = self.o_proj(attended)  # [T, d]
        if batch.lora is not None:
            batch.lora.apply(output, attended, self.layer_index, "o")
        return output


class MLP(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        bias = getattr(config, "mlp_bias", False)
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = MergedLinear(
            config.hidden_size, (config.intermediate_size, config.intermediate_size), bias=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)

    @property
    def gates_in_linear(self) -> bool:
        """Whether the gate|up product takes its SiLU gate in the same compiled call
        (`cpu_linear.linear_silu_and_mul`: fp32 panels, no bias, I a multiple of 32)."""
        return (self.gate_up_proj.packed_panels and self.gate_up_proj.bias is None
                and self.intermediate_size % cpu_linear.PANEL == 0)

    def forward(self, hidden: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        if batch.lora is None and self.gates_in_linear:  # no delta to add before the gate
            activated = cpu_linear.linear_silu_and_mul(
                hidden, self.gate_up_proj.packed_weight, self.intermediate_size)  # [T, I]
            return self.down_proj(activated)
        gate_up = self.gate_up_proj(hidden)  # [T, 2I]
        if batch.lora is not None:
            batch.lora.apply(gate_up, hidden, self.layer_index, "gate_up")
        activated = silu_and_mul(gate_up)  # [T, I]
        output = self.down_proj(activated)  # [T, d]
        if batch.lora is not None:
            batch.lora.apply(output, activated, self.layer_index, "down")
        return output


class DecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_index: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_index)
        self.mlp = MLP(config, layer_index)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                batch: ForwardBatch, kv_cache: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        attended = self.self_attn(self.input_layernorm(hidden), cos, sin, batch, kv_cache)
        normed, hidden = self.post_attention_layernorm.add_and_norm(attended, hidden)
        return hidden + self.mlp(normed, batch)


# a step of decode rows over int4/int8 panels takes the compiled layers below this many rows:
# their products dequantize each weight once a call, which beat the layer-by-layer path's
# dense products of dequantized blocks (and its interpreter) up to 96 rows (144 against 163
# ms a step for the builtin in int4) and lost at 128 (184 against 166;
# `python -m bench.decode_step --dtype float32 --quantize int4 --batch 96|128`)
QUANTIZED_COMPILED_ROWS = 112


class LlamaModel(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, index)
                                    for index in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config, head_dim_of(config))
        # the modules whose weights `compiled_layer_weights` reads at every step, found once
        # (torch's attribute lookup through three levels of modules was 0.4 ms a step)
        self._layer_parts = tuple(
            (layer.input_layernorm, layer.self_attn.qkv_proj, layer.self_attn.o_proj,
             layer.post_attention_layernorm, layer.mlp, layer.mlp.gate_up_proj,
             layer.mlp.down_proj) for layer in self.layers)

    # decode steps may run every layer in one compiled call (`cpu_decoder`) where the layers
    # allow it (`compiled_layer_weights`) and each LoRA group the step targets is on the
    # compiled kernel; False keeps them one by one
    compiled_layers = True

    def forward(self, batch: ForwardBatch, kv_caches: KVCaches) -> torch.Tensor:
        hidden = self.embed_tokens(batch.input_ids)  # [T, d]
        cos, sin = self.rotary_emb(batch.positions, hidden.dtype)  # [T, 1, head_dim]
        may_compile = self._step_may_compile(batch, hidden, kv_caches)
        lora = (batch.lora.compiled_groups(cpu_decoder.LORA_GROUPS)
                if may_compile and batch.lora is not None else None)
        # the layers' weights are read only for a step whose LoRA groups are on the kernel
        weights = (self.compiled_layer_weights(hidden.shape[0])
                   if may_compile and (batch.lora is None or lora is not None) else None)
        if weights is not None:
            hidden = hidden.clone(memory_format=torch.contiguous_format)  # updated in place
            block_size, num_blocks = kv_caches[0][0].shape[1], kv_caches[0][0].shape[0]
            decode = cpu_attention.native_decode(batch.decode.block_tables,
                                                 batch.decode.seq_lens_host, block_size,
                                                 num_blocks)
            cpu_decoder.run_layers(hidden, weights, kv_caches, self._decoder_shape(), cos,
                                   sin, batch.slot_mapping, decode, lora)
            return self.norm(hidden)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(hidden, cos, sin, batch, kv_cache)
        return self.norm(hidden)

    def compiled_layer_weights(self, rows: int) -> tuple[cpu_decoder.LayerWeights, ...] | None:
        """Every layer's weights as `cpu_decoder` reads them for a step of `rows`, taken from
        the layers at each call (a layer packed again is read as it is now), or None unless
        each layer's linears are on the panels with no MLP bias: fp32 ones with the MLP's
        gate in its gate|up call, or int4/int8 ones for fewer than QUANTIZED_COMPILED_ROWS."""
        if not cpu_decoder.available() or self.layers[0].self_attn.head_dim % 2:
            return None
        weights = []
        for input_norm, qkv, o, post_norm, mlp, gate_up, down in self._layer_parts:
            projections = (qkv.compiled_projection(), o.compiled_projection(),
                           gate_up.compiled_projection(), down.compiled_projection())
            if (any(projection is None for projection in projections)
                    or gate_up.bias is not None or down.bias is not None
                    or input_norm.weight.dtype != torch.float32
                    or post_norm.weight.dtype != torch.float32):
                return None
            quantized = any(p.format != cpu_decoder.FP32_PANELS for p in projections)
            if (quantized and rows >= QUANTIZED_COMPILED_ROWS) or (
                    projections[2].format == cpu_decoder.FP32_PANELS
                    and not mlp.gates_in_linear):
                return None
            qkv_weight, o_weight, gate_up_weight, down_weight = projections
            weights.append(cpu_decoder.LayerWeights(
                input_norm.weight.detach(), qkv_weight, qkv.bias, o_weight, o.bias,
                post_norm.weight.detach(), gate_up_weight, down_weight))
        return tuple(weights)

    def _decoder_shape(self) -> cpu_decoder.DecoderShape:
        first = self.layers[0]
        attention = first.self_attn
        return cpu_decoder.DecoderShape(
            first.input_layernorm.weight.shape[0], attention.num_heads, attention.num_kv_heads,
            attention.head_dim, first.mlp.intermediate_size, first.input_layernorm.eps,
            attention.attn.scale)

    def _step_may_compile(self, batch: ForwardBatch, hidden: torch.Tensor,
                          kv_caches: KVCaches) -> bool:
        """A step of decode rows only, in fp32 on the CPU, with compiled layers on."""
        return (self.compiled_layers and batch.prefill is None
                and batch.decode is not None and batch.decode.num_seqs == hidden.shape[0]
                and hidden.dtype == torch.float32 and hidden.device.type == "cpu"
                and kv_caches[0][0].dtype == torch.float32 and kv_caches[0][0].is_contiguous())


class LlamaForCausalLM(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        check_supported(config)
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings and self._embedding_is_plain:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def _embedding_is_plain(self) -> bool:
        return isinstance(self.model.embed_tokens, nn.Embedding)

    def own_linears(self) -> list[Linear]:
        """Linear layers whose weight no other module reads (all but an LM head tied to a
        plain embedding)."""
        tied = self.lm_head if self.config.tie_word_embeddings and self._embedding_is_plain \
            else None
        return [m for m in self.modules() if isinstance(m, Linear) and m is not tied]

    def pack_weights(self) -> int:
        """Pre-pack every linear layer's final weights for the CPU; return how many.
        Packed layers drop their plain weight (one copy in memory, not two). A tied LM head
        packed in panels (fp32) also serves the token lookups (`PanelEmbedding`: the table's
        own rows, no bytes of their own) in place of the plain table or its int8 rows."""
        packed = [module for module in self.modules()
                  if isinstance(module, Linear) and module.pack()]
        if self.config.tie_word_embeddings and self.lm_head.packed_panels:
            self.model.embed_tokens = PanelEmbedding(self.lm_head.packed_weight,
                                                     self.config.vocab_size)
        owned = set(self.own_linears())
        for module in packed:
            if module in owned:
                module.release_weight()
        return len(packed)

    def quantize_weights(self, method: str, group_size: int) -> int:
        """Weight-only quantization of every decoder linear; the LM head in int8 where its
        product runs on `cpu_linear`'s panels (a CPU), else full; the token lookups from a
        tied int8 head's own rows (`Int8PanelEmbedding`: the table held once, in 8 bits),
        else from int8 rows of their own (`quantize_embedding`). The head stays at 8 bits
        under int4: in 4 bits it cost the builtin model 7% perplexity (21.05 against 19.61)
        and agreed with fp32 on 2 of 8 greedy prompts, for 12 MB less (`bench.quantized`)."""
        head_in_panels = int8_kernel(self.lm_head.weight.device) == "panels"
        head_dtype = self.lm_head.weight.dtype
        layers = [m for m in self.modules() if isinstance(m, Linear) and m is not self.lm_head]
        for module in layers:
            module.quantize(method, group_size)
            module.release_weight()
        if head_in_panels:
            self.lm_head.use_quantized(Int8Weight.quantize(self.lm_head.weight))
            self.lm_head.release_weight()  # a tied head's table stays with the embedding
        if head_in_panels and self.config.tie_word_embeddings:
            self.model.embed_tokens = Int8PanelEmbedding(self.lm_head.quantized, head_dtype)
        else:
            self.quantize_embedding()
        return len(layers) + head_in_panels

    def quantize_embedding(self, embedding: QuantizedEmbedding | None = None) -> bool:
        """Look tokens up in int8 rows (`embedding`, else the table's own rounded) where that
        saves memory; False, the table left plain, where a tied LM head reads it as it is
        (not packed: on a GPU), beside which a quantized copy would only add bytes. A tied
        LM head that is packed keeps the plain table until `pack_weights` releases it (and
        one packed in fp32 panels then serves the lookups itself)."""
        if self.config.tie_word_embeddings and not self.lm_head.can_pack:
            return False
        self.model.embed_tokens = embedding or QuantizedEmbedding.quantize(
            self.model.embed_tokens.weight)
        return True

    def weight_bytes(self) -> int:
        """Bytes of every weight in the form it is served (packed, quantized or plain)."""
        owned = self.own_linears()
        linears = {id(m.weight) for m in owned if m.weight is not None}
        others = sum(p.numel() * p.element_size() for p in self.parameters()
                     if id(p) not in linears)
        embedding = 0 if self._embedding_is_plain else self.model.embed_tokens.nbytes
        # an LM head tied to the plain table, packed: its oneDNN copy is a second form
        packed_tied = [] if self.lm_head in owned or self.lm_head.packed_weight is None else [
            self.lm_head]
        return others + embedding + sum(m.weight_bytes for m in [*owned, *packed_tied])

    def streamed_weight_bytes(self) -> int:
        """Bytes of the weights a forward pass reads whole: every served weight but the token
        embedding's table, of which it reads only the rows it looks up (unless the LM head
        multiplies by that same table: tied and not packed)."""
        embedding = self.model.embed_tokens
        if not self._embedding_is_plain:
            return self.weight_bytes() - embedding.nbytes
        head_reads_table = self.config.tie_word_embeddings and self.lm_head.packed_weight is None
        return self.weight_bytes() - (0 if head_reads_table else embedding.weight.nbytes)

    def reset_buffers(self) -> None:
        """Compute non-parameter state once the module sits on its device."""
        self.model.rotary_emb.reset_parameters()

    def forward(self, batch: ForwardBatch, kv_caches: KVCaches) -> torch.Tensor:
        return self.model(batch, kv_caches)  # [T, d]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()  # [N, vocab]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load a Hugging Face checkpoint's tensors; raise if any parameter stays unset."""
        params = dict(self.named_parameters())
        missing = set(params)
        if self.config.tie_word_embeddings:
            missing.discard("lm_head.weight")
        pending_shards: dict[str, set[int]] = {}
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            if name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            module_name, _, leaf = name.rpartition(".")
            parent, _, projection = module_name.rpartition(".")
            if projection in STACKED_PROJECTIONS:
                fused, index = STACKED_PROJECTIONS[projection]
                target = f"{parent}.{fused}.{leaf}"
                if target not in params:
                    raise no_place(name)
                self.get_submodule(f"{parent}.{fused}").load_shard(index, leaf, tensor)
                parts = pending_shards.setdefault(target, set())
                parts.add(index)
                if len(parts) == len(self.get_submodule(f"{parent}.{fused}").output_sizes):
                    missing.discard(target)
                continue
            if name not in params:
                raise no_place(name)
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                                 f"model expects {tuple(params[name].shape)}")
            params[name].data.copy_(tensor)
            missing.discard(name)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} weights, e.g. "
                             f"{sorted(missing)[:5]}")
