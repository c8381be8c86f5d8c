"""An fp32 decode step's decoder layers on the CPU as one compiled call (`cpu_decoder.c`),
over fp32 weights or weight-only int4/int8/codebook (NF4) ones.

Layer by layer, the interpreter's work between the compiled kernels (module calls, views,
argument checks: about 0.2 ms a layer) was a fifth of the builtin model's decode step at
batch 1. `run_layers` hands the C driver every layer's weight and cache addresses and the
kernels' own entry points, so a step's layers are one call that runs the same kernels in
the same order: the hidden states equal the layer-by-layer path's bit for bit. A step with
adapters adds each group's delta through the LoRA kernel (`cpu_lora`) at the same points;
its gate is then the C library's SiLU (the last bits may differ from torch's), as it is for
a quantized gate|up (its product has no gated form). The model decides when a step may take
it (`LlamaModel`): fp32 activations, every projection on the panels (fp32, or quantized
below `QUANTIZED_COMPILED_ROWS`), decode rows only, and each targeted LoRA group on the
kernel.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import cpu_attention, cpu_layer_ops, cpu_linear, cpu_lora, cpu_native

LORA_GROUPS = ("qkv", "o", "gate_up", "down")  # in cpu_decoder.c's order


FP32_PANELS, INT4_BF16_TABLES, INT4_FP32_TABLES, INT8_PANELS, CODEBOOK4_PANELS = range(5)


@dataclass(frozen=True)
class Projection:
    """One projection's weight as the driver reads it: `cpu_linear`'s fp32 panels, or
    `cpu_quantized_linear`'s int4 panels with their tables or int8 panels with their
    scales (contiguous, checked by whoever packed them)."""

    format: int  # one of cpu_decoder.c's: FP32_PANELS ... CODEBOOK4_PANELS
    codes: torch.Tensor  # fp32 panels [N / 32, K, 32], int4 [N / 32, K, 16], int8 [N / 32, K, 32]
    # int4 [N / 32, K / g, 2, 32], int8 scales [32 N / 32], codebook scales [N / 32, K / g, 32]
    tables: torch.Tensor | None = None
    group: int = 0  # int4 and codebook inputs per group
    codebook: torch.Tensor | None = None  # [16] fp32

    @classmethod
    def fp32(cls, panels: torch.Tensor) -> Projection:
        return cls(FP32_PANELS, panels)

    @classmethod
    def int4(cls, codes: torch.Tensor, tables: torch.Tensor) -> Projection:
        tables_format = INT4_FP32_TABLES if tables.dtype == torch.float32 else INT4_BF16_TABLES
        return cls(tables_format, codes, tables, codes.shape[1] // tables.shape[1])

    @classmethod
    def int8(cls, codes: torch.Tensor, scales: torch.Tensor) -> Projection:
        return cls(INT8_PANELS, codes, scales)

    @classmethod
    def codebook4(cls, codes: torch.Tensor, scales: torch.Tensor,
                  codebook: torch.Tensor) -> Projection:
        return cls(CODEBOOK4_PANELS, codes, scales, codes.shape[1] // scales.shape[1], codebook)

    def fields(self) -> list[int]:
        """The PROJECTION_FIELDS values of cpu_decoder.c's layer table."""
        return [self.format, self.codes.data_ptr(), _address(self.tables), self.group,
                _address(self.codebook)]


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's tensors as the driver reads them (fp32, contiguous)."""

    input_norm: torch.Tensor  # [d]
    qkv: Projection  # [q_size + 2 kv_size, d]
    qkv_bias: torch.Tensor | None  # [q_size + 2 kv_size]
    o: Projection  # [d, q_size]
    o_bias: torch.Tensor | None  # [d]
    post_norm: torch.Tensor  # [d]
    gate_up: Projection  # [2 I, d]; fp32 panels are gated in their product
    down: Projection  # [d, I]


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    eps: float
    scale: float  # attention's, usually head_dim ** -0.5


class _Kernels(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "linear", "gated", "rms_norm", "rotary", "attend", "lora", "linear_int4", "linear_int8",
        "linear_codebook4")]


class _GroupLora(ctypes.Structure):
    _fields_ = [("a", ctypes.c_void_p), ("b", ctypes.c_void_p),
                ("a_layer_bytes", ctypes.c_int64), ("b_layer_bytes", ctypes.c_int64),
                ("shape", ctypes.c_void_p), ("items", ctypes.c_void_p)]


class _Shape(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int64) for name in (
            "rows", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "num_layers",
            "block_size", "table_width", "num_slots")),
        ("eps", ctypes.c_float), ("scale", ctypes.c_float),
    ]


def available() -> bool:
    """Whether the driver and every kernel it runs are built here."""
    return _entry_points() is not None


def run_layers(hidden: torch.Tensor, layers: Sequence[LayerWeights],
               caches: Sequence[tuple[torch.Tensor, torch.Tensor]], shape: DecoderShape,
               cos: torch.Tensor, sin: torch.Tensor, slots: torch.Tensor,
               decode: cpu_attention.NativeDecode,
               lora: Sequence[cpu_lora.BoundLora | None] | None = None) -> None:
    """hidden [T, d] (contiguous fp32) through every layer, in place; decode row t writes its
    key and value into cache slot slots[t] (int64 [T]) and attends through `decode`'s
    tables. cos, sin [T, 1, D] contiguous; caches [blocks, block_size, Hkv, D]. lora: the
    step's bound kernel of each of LORA_GROUPS (None: not targeted), for a step with
    adapters (`LoraBatch.compiled_groups`)."""
    rows, width = hidden.shape
    if (hidden.dtype != torch.float32 or not hidden.is_contiguous() or width != shape.hidden
            or slots.shape != (rows,) or slots.dtype != torch.int64
            or cos.shape != (rows, 1, shape.head_dim) or not cos.is_contiguous()
            or not sin.is_contiguous() or decode.lengths.shape != (rows,)
            or len(caches) != len(layers)):
        raise ValueError("cpu_decoder takes contiguous fp32 rows of the model's width, one "
                         "int64 slot, cos/sin row and decode length per row, and a cache "
                         "per layer")
    key_cache = caches[0][0]
    cache_shape = (key_cache.shape[0], key_cache.shape[1], shape.kv_heads, shape.head_dim)
    if decode.tables.shape[0] != rows or any(
            cache.shape != cache_shape or cache.dtype != torch.float32
            or not cache.is_contiguous() for pair in caches for cache in pair):
        raise ValueError(f"cpu_decoder takes a block table per row and contiguous fp32 "
                         f"caches of one shape [blocks, block_size, {shape.kv_heads}, "
                         f"{shape.head_dim}]")
    addresses = torch.tensor([
        [layer.input_norm.data_ptr(), _address(layer.qkv_bias), _address(layer.o_bias),
         layer.post_norm.data_ptr(), keys.data_ptr(), values.data_ptr(),
         *layer.qkv.fields(), *layer.o.fields(), *layer.gate_up.fields(),
         *layer.down.fields()]
        for layer, (keys, values) in zip(layers, caches, strict=True)], dtype=torch.int64)
    q_size, kv_size = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    scratch = torch.empty(rows * (2 * width + 2 * q_size + 2 * kv_size
                                  + 3 * shape.intermediate), dtype=torch.float32)
    groups = None if lora is None else _lora_groups(lora)
    native_shape = _Shape(rows, width, shape.heads, shape.kv_heads, shape.head_dim,
                          shape.intermediate, len(layers), key_cache.shape[1],
                          decode.tables.shape[1], key_cache.shape[0] * key_cache.shape[1],
                          shape.eps, shape.scale)
    library, kernels = _entry_points()
    status = library.decoder_layers_f32(
        hidden.data_ptr(), ctypes.byref(kernels), addresses.data_ptr(),
        ctypes.byref(native_shape), cos.data_ptr(), sin.data_ptr(), slots.data_ptr(),
        decode.tables.data_ptr(), decode.lengths.data_ptr(), groups, scratch.data_ptr(),
        torch.get_num_threads())
    if status == -2:
        raise MemoryError("a quantized product in the compiled layers could not allocate "
                          "its scratch")
    if status == -4:
        raise RuntimeError("cpu_lora kernel refused its arguments in the compiled layers")
    if status == -3:
        raise ValueError(f"a KV cache slot is outside the cache's {native_shape.num_slots}")
    cpu_attention.raise_for_status(status, shape.heads, shape.kv_heads)


def _lora_groups(bound: Sequence[cpu_lora.BoundLora | None]) -> ctypes.Array:
    if len(bound) != len(LORA_GROUPS):
        raise ValueError(f"cpu_decoder takes a LoRA entry for each of {LORA_GROUPS}")
    groups = (_GroupLora * len(LORA_GROUPS))()
    for group, kernel in zip(groups, bound, strict=True):
        arguments = None if kernel is None else kernel.kernel_arguments()
        if kernel is not None and (arguments is None or kernel.dtype != torch.float32):
            raise ValueError("cpu_decoder runs fp32 LoRA groups whose slots are all on "
                             "the kernel")
        if arguments is not None:
            a, a_layer, b, b_layer, shape, items = arguments
            group.a, group.a_layer_bytes, group.b, group.b_layer_bytes = a, a_layer, b, b_layer
            group.shape, group.items = ctypes.addressof(shape), ctypes.addressof(items)
    return groups


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


@functools.cache
def _entry_points() -> tuple[ctypes.CDLL, _Kernels] | None:
    """The driver, typed, and the kernels' addresses; None where any of them is not built."""
    library = cpu_native.load("cpu_decoder")
    linear, attention = cpu_linear._library(), cpu_attention._library()
    layer_ops, lora = cpu_layer_ops._kernels().get(torch.float32), cpu_lora._library()
    if (library is None or linear is None or attention is None or layer_ops is None
            or lora is None):
        return None
    projection_fields = len(Projection.__dataclass_fields__)
    fields = len(LayerWeights.__dataclass_fields__) + 2 + 4 * (projection_fields - 1)
    if library.layer_fields() != fields:  # + the caches, each projection's further fields
        raise RuntimeError("cpu_decoder.c and cpu_decoder.py disagree on the layer table")
    pointer = ctypes.c_void_p
    library.decoder_layers_f32.argtypes = [pointer] * 11 + [ctypes.c_int]
    library.decoder_layers_f32.restype = ctypes.c_int
    kernels = _Kernels(*(ctypes.cast(function, pointer).value for function in (
        linear.linear_f32, linear.linear_f32_gated, layer_ops.rms_norm, layer_ops.rotary,
        attention.paged_decode_f32, lora.lora_items_f32, linear.linear_int4,
        linear.linear_int8, linear.linear_codebook4)))
    return library, kernels
