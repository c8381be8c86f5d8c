"""4-bit weights whose codes name values of a codebook: NF4, as QLoRA and bitsandbytes store
a base model under its adapters.

NF4 ("normal float") spends its 16 values on the quantiles of a normal distribution, which
is how trained weights fall, rather than on an even grid: w = NF4[q] * absmax, one absmax per
block of 64 inputs of an output feature (bitsandbytes' default block). A QLoRA adapter was
trained on exactly these weights, so serving the base in NF4 gives it the base it learned
against. On a CPU where `kernels.cpu_linear` builds, the codes sit in its int4 panels and each
product looks the 16 values up in registers (one permute per 16 weights); where Triton runs
(CUDA; meta, for the step cost model) the int4 dequantize-GEMM reads them with the codebook
(`kernels.int4_gemm.codebook_matmul`, groups of 32 to 256 inputs); elsewhere the weight is
dequantized for each product: correct, and still 4-bit at rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loraplex.runtime.kernels import cpu_decoder, cpu_quantized_linear
from loraplex.runtime.kernels.int4_checks import INT4_GROUP_SIZES
from loraplex.runtime.layers.quantized import (
    PANELS_DENSE_ROWS,
    QuantizedWeight,
    int4_kernel,
    pack_int4,
    unpack_int4,
)

# QLoRA's NF4 values (Dettmers et al. 2023, appendix E), as bitsandbytes defines them
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
NF4_BLOCK = 64  # inputs per absmax, bitsandbytes' default blocksize
CODEBOOK_KERNELS = ("panels", "triton", "dequantize")


class CodebookWeight(QuantizedWeight):
    """4-bit codes into a 16-value codebook, one scale per group of inputs."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, codebook: torch.Tensor,
                 group_size: int, kernel: str | None = None) -> None:
        """codes [N, K] in 0..15, scales [N, K / group_size], codebook [16]:
        w = codebook[q] * scale. `kernel`: "panels" (CPU, where they build), "triton" (where
        Triton runs) or "dequantize"; by default `codebook_kernel`'s choice."""
        self.out_features, self.in_features = codes.shape
        if codebook.shape != (16,) or scales.shape != (self.out_features,
                                                       self.in_features // group_size) \
                or self.in_features % group_size:
            raise ValueError(f"a codebook weight needs 16 values and a scale per "
                             f"{group_size} inputs dividing its {self.in_features}")
        self.kernel = kernel or codebook_kernel(codes.device, group_size)
        if self.kernel not in CODEBOOK_KERNELS:
            raise ValueError(f"codebook kernel must be one of {CODEBOOK_KERNELS}, "
                             f"got {self.kernel!r}")
        self.group_size = group_size
        self.codebook = codebook.float().contiguous()  # [16]
        if self.kernel == "panels":  # [N / 32, K, 16] codes, [N / 32, K / g, 32] scales
            self.packed, self.panel_scales = cpu_quantized_linear.pack_codebook4(
                codes, scales.t())
            self.panel_product = cpu_quantized_linear.codebook4_product(
                self.packed, self.panel_scales, self.codebook, self.out_features)
        elif self.kernel == "triton":  # [N, K / 2] codes, [K / g, N] fp32 scales
            from loraplex.runtime.kernels.int4_gemm import codebook_matmul

            self.packed = pack_int4(codes.to(torch.int32), self.kernel)
            self.scales = scales.float().t().contiguous()
            self.triton_matmul = codebook_matmul
        else:
            self.plain_codes = codes.to(torch.uint8).contiguous()  # [N, K]
            self.scales = scales.float().contiguous()  # [N, K / g]

    @classmethod
    def quantize_nf4(cls, weight: torch.Tensor, kernel: str | None = None) -> CodebookWeight:
        """Each block of NF4_BLOCK inputs scaled by its largest magnitude, each weight to
        the nearest NF4 value (as bitsandbytes' `quantize_4bit` rounds)."""
        out_features, in_features = weight.shape
        if in_features % NF4_BLOCK:
            raise ValueError(f"nf4 takes blocks of {NF4_BLOCK} inputs; this layer has "
                             f"{in_features}")
        codebook = torch.tensor(NF4, device=weight.device)
        blocks = weight.detach().float().view(out_features, -1, NF4_BLOCK)  # [N, K/64, 64]
        absmax = blocks.abs().amax(dim=-1).clamp(min=torch.finfo(torch.float32).tiny)
        midpoints = (codebook[1:] + codebook[:-1]) / 2  # [15]: nearest value by bisection
        codes = torch.bucketize(blocks / absmax[..., None], midpoints)
        return cls(codes.view(out_features, in_features), absmax, codebook, NF4_BLOCK, kernel)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "panels" and x.shape[0] >= PANELS_DENSE_ROWS:
            return cpu_quantized_linear.dense_codebook4_product(
                x, self.packed, self.panel_scales, self.codebook, self.out_features).to(x.dtype)
        if self.kernel == "panels":
            return self.panel_product(x).to(x.dtype)
        if self.kernel == "triton":
            rows = x if x.stride(-1) == 1 else x.contiguous()  # [T, K], unit stride along K
            return self.triton_matmul(rows, self.packed, self.scales, self.codebook,
                                      self.group_size)
        return F.linear(x, self.dequantize().to(x.dtype))

    def codes(self) -> torch.Tensor:  # [N, K] in 0..15
        if self.kernel == "panels":
            return cpu_quantized_linear.unpack_codebook4(self.packed, self.panel_scales,
                                                         self.out_features)[0]
        if self.kernel == "triton":
            return unpack_int4(self.packed)
        return self.plain_codes.int()

    def group_scales(self) -> torch.Tensor:  # [N, K / g] fp32
        if self.kernel == "panels":
            return cpu_quantized_linear.unpack_codebook4(self.packed, self.panel_scales,
                                                         self.out_features)[1].t()
        if self.kernel == "triton":
            return self.scales.t()
        return self.scales

    def dequantize(self) -> torch.Tensor:  # [N, K] fp32
        scales = self.group_scales().repeat_interleave(self.group_size, dim=1)
        return self.codebook[self.codes().long()] * scales

    def compiled_projection(self) -> cpu_decoder.Projection | None:
        if self.kernel != "panels":
            return None
        return cpu_decoder.Projection.codebook4(self.packed, self.panel_scales, self.codebook)

    @property
    def nbytes(self) -> int:
        if self.kernel == "panels":
            return self.packed.nbytes + self.panel_scales.nbytes + self.codebook.nbytes
        if self.kernel == "triton":
            return self.packed.nbytes + self.scales.nbytes + self.codebook.nbytes
        return self.plain_codes.nbytes + self.scales.nbytes + self.codebook.nbytes


def codebook_kernel(device: torch.device, group_size: int) -> str:
    """The codebook product on `device`: int4's kernel where its codes fit it (the Triton
    one for group sizes it tiles), else dequantizing."""
    kernel = int4_kernel(device)
    if kernel == "panels" or (kernel == "triton" and group_size in INT4_GROUP_SIZES):
        return kernel
    return "dequantize"
