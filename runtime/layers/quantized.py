"""Weight-only quantized weights for `Linear`: int8 per output channel, int4 per group.

A pod with a small GPU (or a CPU) holds the base weights in 8 or 4 bits and multiplies
them with activations in the serving dtype; LoRA deltas are added on top of the output
exactly as for full weights, so adapters need nothing new. The products use torch's own
weight-only kernels, and on a CPU our compiled panels where they build. torch's CPU
kernels are vectorized for bf16 activations only: with fp32 activations the same
[32 x 576] @ [576 x 1536] product took 16.7 ms (int8) and 48 ms (int4) against 0.75 and
0.71 ms in bf16 on our 2-core bench machine, so there the product runs in bf16
(`KERNEL_DTYPE_CPU`) and returns the layer's dtype; an fp32 model keeps its format tables
in fp32 for `dequantize()`.
- int8: symmetric per output channel: w = q * scale. On a CPU where `kernels.cpu_linear`
  builds, its int8 panels ("panels"); elsewhere `aten._weight_int8pack_mm(x, q[N, K] int8,
  scales[N])` (CPU and CUDA).
- int4: asymmetric per group of `group_size` inputs: w = (q - 8) * scale + zero with q in
  0..15. On a CPU where `kernels.cpu_linear` builds, its int4 panels ("panels": codes
  [N / 32, K, 16], tables [N / 32, K / g, 2, 32] in fp32 for an fp32 model, else bf16;
  fp32 products, each weight dequantized once per product, where torch's CPU kernel
  dequantizes it again for every row: 0.6-0.7x its time at 32 rows, as fast at one);
  elsewhere tinygemm's layout, scales and zeros `[K / g, N, 2]`: on the CPU
  `aten._weight_int4pack_mm_for_cpu`; on CUDA (and on meta tensors, for the step cost
  model) the Triton dequantize-GEMM `kernels.int4_gemm`, which reads the codes tile by
  tile and never materialises the weight. Only where Triton cannot run (other devices,
  or CUDA without the `triton` package) is the weight dequantized for each product:
  correct, and still 4-bit at rest.
Every format that maps onto these (round-to-nearest at load, GGUF Q4_0/Q4_1) is built
through `Int4Weight.from_codes`, so one `dequantize()` is the reference for all of them.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from loraplex.runtime.kernels import cpu_decoder, cpu_linear, cpu_quantized_linear
from loraplex.runtime.kernels.int4_checks import INT4_GROUP_SIZES

INT4_KERNELS = ("panels", "cpu", "triton", "dequantize")  # see `int4_kernel`
INT8_KERNELS = ("panels", "torch")  # our CPU panels; torch's weight-only kernel
INT4_CPU_ROWS = 16  # the CPU kernel's output tile
INT4_INNER_K_TILES = 2  # tinygemm's inner tiling of the packed layout (2, 4 or 8)
KERNEL_DTYPE_CPU = torch.bfloat16  # the activation dtype the CPU kernels are fast in
# the CPU int8 kernel costs ~13 us per row of a [576 x 960] product; from 16 rows on,
# converting the codes to bf16 for one dense product is cheaper (2x at 32 rows, `bench.quantized`)
INT8_CPU_DEQUANTIZE_ROWS = 16
# from this many rows (prefill chunks) a weight on the CPU panels is dequantized once to bf16
# for one dense product (oneDNN; AMX where present): for the builtin model's gate|up it took
# 0.5x the panels' time at 128 rows and 0.33x at 256, 1.17x at 32 (`bench.linear --quantized`)
PANELS_DENSE_ROWS = 48


class QuantizedWeight:
    """What `Linear` needs of a quantized weight."""

    out_features: int
    in_features: int

    def linear(self, x: torch.Tensor) -> torch.Tensor:  # [T, K] -> [T, N]
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:  # [N, K] in fp32
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError

    def compiled_projection(self) -> cpu_decoder.Projection | None:
        """The weight as the compiled decode layers read it (None: not on the panels)."""
        return None


class Int8Weight(QuantizedWeight):
    """Symmetric int8, one scale per output channel."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype,
                 kernel: str | None = None) -> None:
        """codes [N, K] in -127..127, scales [N]: w = q * scale. `kernel`: one of
        INT8_KERNELS, by default "panels" on a CPU where they build."""
        self.out_features, self.in_features = codes.shape
        self.kernel = kernel or int8_kernel(codes.device)
        if self.kernel not in INT8_KERNELS:
            raise ValueError(f"int8 kernel must be one of {INT8_KERNELS}, got {self.kernel!r}")
        if self.kernel == "panels":  # [N / 32, K, 32] codes, [32 N / 32] fp32 scales
            self.packed, self.panel_scales = cpu_quantized_linear.pack_int8(codes, scales)
            self.panel_product = cpu_quantized_linear.int8_product(
                self.packed, self.panel_scales, self.out_features)
            return
        self.plain_codes = codes.to(torch.int8).contiguous()  # [N, K]
        self.scales = scales.float().contiguous()  # [N], fp32: the format's own precision
        self.kernel_dtype = kernel_dtype(codes.device, dtype)
        self.kernel_scales = self.scales.to(self.kernel_dtype)  # [N], as the kernel reads them

    @classmethod
    def quantize(cls, weight: torch.Tensor, kernel: str | None = None) -> Int8Weight:
        """Round to nearest: scale = max |w| / 127 per output channel."""
        full = weight.detach().float()  # [N, K]
        scales = (full.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
        codes = torch.round(full / scales[:, None]).clamp(-127, 127)
        return cls(codes, scales, weight.dtype, kernel)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "panels" and x.shape[0] >= PANELS_DENSE_ROWS:
            return cpu_quantized_linear.dense_int8_product(
                x, self.packed, self.panel_scales, self.out_features).to(x.dtype)
        if self.kernel == "panels":
            return self.panel_product(x).to(x.dtype)
        x_kernel = x.to(self.kernel_dtype)
        if self.plain_codes.device.type == "cpu" and x.shape[0] >= INT8_CPU_DEQUANTIZE_ROWS:
            # the codes are exact in bf16: one dense product, scaled per output channel
            output = F.linear(x_kernel, self.plain_codes.to(self.kernel_dtype)) * \
                self.kernel_scales
        else:
            output = torch.ops.aten._weight_int8pack_mm(x_kernel, self.plain_codes,
                                                        self.kernel_scales)
        return output.to(x.dtype)

    def codes(self) -> torch.Tensor:  # [N, K] int8
        if self.kernel == "panels":
            return cpu_quantized_linear.unpack_int8(self.packed, self.out_features)
        return self.plain_codes

    def channel_scales(self) -> torch.Tensor:  # [N] fp32
        return self.panel_scales[:self.out_features] if self.kernel == "panels" else self.scales

    def dequantize(self) -> torch.Tensor:
        return self.codes().float() * self.channel_scales()[:, None]

    def compiled_projection(self) -> cpu_decoder.Projection | None:
        if self.kernel != "panels":
            return None
        return cpu_decoder.Projection.int8(self.packed, self.panel_scales)

    @property
    def nbytes(self) -> int:
        if self.kernel == "panels":
            return self.packed.nbytes + self.panel_scales.nbytes
        return self.plain_codes.nbytes + self.scales.nbytes + self.kernel_scales.nbytes


class Int4Weight(QuantizedWeight):
    """Asymmetric int4 per group of inputs, packed once for the device's kernel."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, dtype: torch.dtype, kernel: str | None = None) -> None:
        """codes [N, K] in 0..15, scales and zeros [N, K / group_size]: w = (q - 8) s + z.
        `kernel`: one of INT4_KERNELS, by default the one `int4_kernel` picks."""
        self.out_features, self.in_features = codes.shape
        check_int4_shape(self.in_features, group_size)
        self.kernel = kernel or int4_kernel(codes.device)
        if self.kernel not in INT4_KERNELS:
            raise ValueError(f"int4 kernel must be one of {INT4_KERNELS}, got {self.kernel!r}")
        if self.kernel == "cpu" and self.out_features % INT4_CPU_ROWS:
            raise ValueError(f"int4 on the CPU needs a multiple of {INT4_CPU_ROWS} outputs; "
                             f"this layer has {self.out_features}")
        self.group_size = group_size
        self.device = codes.device
        if self.kernel == "panels":  # [N / 32, K, 16] codes, [N / 32, K / g, 2, 32] tables
            self.packed, self.scales_and_zeros = cpu_quantized_linear.pack_int4(
                codes, scales.t(), zeros.t(),
                torch.float32 if dtype == torch.float32 else torch.bfloat16)
            self.panel_product = cpu_quantized_linear.int4_product(
                self.packed, self.scales_and_zeros, self.out_features)
        else:
            self.packed = pack_int4(codes.to(torch.int32).contiguous(), self.kernel)
            # [K / g, N, 2] in the model's dtype; an fp32 model's table is rounded to the
            # CPU kernel's bf16 for each product (3% of a decode step) rather than kept twice
            self.scales_and_zeros = torch.stack([scales.t(), zeros.t()], dim=-1).to(
                dtype).contiguous()
        self.kernel_dtype = kernel_dtype(self.device, dtype)
        if self.kernel == "triton":  # imported here: a CPU server never loads triton
            from loraplex.runtime.kernels.int4_gemm import int4_matmul

            self.triton_matmul = int4_matmul

    @classmethod
    def quantize(cls, weight: torch.Tensor, group_size: int,
                 kernel: str | None = None) -> Int4Weight:
        """Round to nearest over each group's [min, max] in 16 steps."""
        out_features, in_features = weight.shape
        check_int4_shape(in_features, group_size)
        groups = weight.detach().float().view(out_features, -1, group_size)  # [N, K/g, g]
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # [N, K/g]
        scales = ((high - low) / 15.0).clamp(min=torch.finfo(torch.float32).tiny)
        codes = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15)
        return cls.from_codes(codes.view(out_features, in_features), scales, low, group_size,
                              weight.dtype, kernel)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                   group_size: int, dtype: torch.dtype, kernel: str | None = None
                   ) -> Int4Weight:
        """From codes with w = q * scale + offset (GGUF Q4_1, round-to-nearest)."""
        return cls(codes, scales, offsets + 8.0 * scales, group_size, dtype, kernel)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "panels" and x.shape[0] >= PANELS_DENSE_ROWS:
            return cpu_quantized_linear.dense_int4_product(
                x, self.packed, self.scales_and_zeros, self.out_features).to(x.dtype)
        if self.kernel == "panels":
            return self.panel_product(x).to(x.dtype)
        if self.kernel == "cpu":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.to(self.kernel_dtype), self.packed, self.group_size,
                self.scales_and_zeros.to(self.kernel_dtype)).to(x.dtype)
        if self.kernel == "triton":
            rows = x if x.stride(-1) == 1 else x.contiguous()  # [T, K], unit stride along K
            return self.triton_matmul(rows, self.packed, self.scales_and_zeros, self.group_size)
        return F.linear(x, self.dequantize().to(x.dtype))

    def codes(self) -> torch.Tensor:  # [N, K] in 0..15
        if self.kernel == "panels":
            return cpu_quantized_linear.unpack_int4(self.packed, self.scales_and_zeros,
                                                    self.out_features)[0]
        if self.kernel != "cpu":
            return unpack_int4(self.packed)
        identity = torch.eye(self.in_features, dtype=torch.float32, device=self.device)
        unit = torch.zeros_like(self.scales_and_zeros, dtype=torch.float32)
        unit[..., 0] = 1.0  # scale 1, zero 0: the kernel returns q - 8 per weight
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            identity, self.packed, self.group_size, unit).t().round().int() + 8

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales, zeros), each [K / g, N] in fp32."""
        if self.kernel == "panels":
            _, scales, zeros = cpu_quantized_linear.unpack_int4(self.packed,
                                                                self.scales_and_zeros,
                                                      self.out_features)
            return scales.float(), zeros.float()
        scales, zeros = self.scales_and_zeros.float().unbind(-1)
        return scales, zeros

    def compiled_projection(self) -> cpu_decoder.Projection | None:
        if self.kernel != "panels":
            return None
        return cpu_decoder.Projection.int4(self.packed, self.scales_and_zeros)

    def dequantize(self) -> torch.Tensor:
        scales, zeros = self.tables()  # [K/g, N] each
        expand = lambda t: t.t().repeat_interleave(self.group_size, dim=1)  # [N, K]
        return (self.codes().float() - 8.0) * expand(scales) + expand(zeros)

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales_and_zeros.nbytes


def kernel_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The activation dtype a product on `device` runs in for a model in `dtype`."""
    return KERNEL_DTYPE_CPU if device.type == "cpu" else dtype


def check_int4_shape(in_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if in_features % group_size:
        raise ValueError(f"int4 with groups of {group_size} needs the input width to be a "
                         f"multiple of it; this layer has {in_features} inputs (choose "
                         f"--quantize-group-size from {INT4_GROUP_SIZES} dividing it)")


def int8_kernel(device: torch.device) -> str:
    """The int8 product on `device`: our CPU panels where they build, else torch's."""
    return "panels" if device.type == "cpu" and cpu_linear.available() else "torch"


def int4_kernel(device: torch.device) -> str:
    """The int4 product on `device`: our CPU panels where they build, else torch's CPU
    kernel; the Triton dequantize-GEMM where Triton runs (CUDA; meta, where launches are
    costed, not run); else dequantizing."""
    if device.type == "cpu":
        return "panels" if cpu_linear.available() else "cpu"
    if device.type in ("cuda", "meta") and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "dequantize"


def pack_int4(codes: torch.Tensor, kernel: str) -> torch.Tensor:
    """Codes [N, K] int32 in 0..15 in the layout of `kernel` (one of INT4_KERNELS)."""
    if kernel == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, INT4_INNER_K_TILES)
    # uint8 [N, K / 2]: code 2j in the low nibble of byte j, code 2j + 1 in the high one
    return (codes[:, 1::2] << 4 | codes[:, ::2]).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """`pack_int4`'s uint8 [N, K / 2] (any kernel but "cpu") -> codes [N, K] int32."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(1).int()


def quantize_weight(weight: torch.Tensor, method: str, group_size: int) -> QuantizedWeight:
    """`weight` rounded to `method` at load (`group_size`: int4's inputs per group)."""
    if method == "int8":
        return Int8Weight.quantize(weight)
    if method == "int4":
        return Int4Weight.quantize(weight, group_size)
    if method == "nf4":  # its own module builds on this one
        from loraplex.runtime.layers.codebook import CodebookWeight

        return CodebookWeight.quantize_nf4(weight)
    raise ValueError(f"unknown quantization {method!r} (int8, int4 or nf4)")
