"""Counts what a step costs, op by op: bytes, FLOPs, launches and device-to-host syncs.

`StepCounter` is a `TorchDispatchMode` over meta tensors: every aten op is run (on meta:
shapes only) and counted; views and allocations cost nothing; a copy of a meta tensor to
the host (`.tolist()`, `.item()`, `.cpu()`) is a device-to-host sync, answered with zeros
so the code goes on. Triton launchers report their own launches (`kernels.launch_costs`).
`classify_modules` labels every op with the op class of the module that runs it.

Bytes are what each op's arguments and results occupy, with the ops that touch a part of
a big tensor counted by that part: gathers (embedding, index) read the rows they return,
scatters (index_copy_, index_put_) and copies write what they are given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from loraplex.runtime.engine import step_sampling
from loraplex.runtime.kernels.launch_costs import LaunchCost, listening
from loraplex.runtime.layers.attention import PagedAttention
from loraplex.runtime.layers.lora import LoraBatch
from loraplex.runtime.layers.rms_norm import RMSNorm
from loraplex.runtime.layers.rotary import RotaryEmbedding
from loraplex.runtime.models.llama import Attention, DecoderLayer

OP_CLASSES = ("linears", "attention", "lora", "norms/rotary", "sampling", "other")
aten = torch.ops.aten
FREE_OPS = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
            aten.lift_fresh.default, aten.detach.default, aten.detach_.default,
            aten._local_scalar_dense.default}
GATHERS = {aten.embedding.default, aten.index.Tensor, aten.index_select.default,
           aten.gather.default}
SCATTERS = {aten.index_copy_.default, aten.index_put_.default, aten.copy_.default,
            aten.index_copy.default, aten.index_put.default}
MATMULS = {aten.mm.default, aten.addmm.default, aten.bmm.default}
WEIGHT_PRODUCTS = {aten.linear.default, aten._weight_int8pack_mm.default}  # x, weight [N, K]


@dataclass
class OpCount:
    name: str
    kind: str  # one of OP_CLASSES
    read: int
    written: int
    flops: int
    launches: int
    syncs: int = 0


_labels: list[str] = ["other"]  # op class of the innermost labelled module running
_layer_depth = [0]  # > 0 while a decoder layer runs


class StepCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpCount] = []
        self.layer_launches = 0
        self._launches = ExitStack()

    def __enter__(self) -> StepCounter:
        self._launches.enter_context(listening(self._on_launch))
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._launches.close()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_meta = any(t.device.type == "meta" for t in tensors)
        to_host = torch.device("cpu") in [*args[1:], *kwargs.values()]
        if on_meta and to_host and func.__name__.startswith(("to.", "_to_copy")):
            source = args[0]
            self._add(func, source.nbytes, 0, 0, launches=1, syncs=1)
            return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype)
        if func is aten._local_scalar_dense.default and on_meta:
            self._add(func, args[0].nbytes, 0, 0, launches=1, syncs=1)
            return 0
        out = func(*args, **kwargs)
        if func is aten.scaled_dot_product_attention.default and on_meta:
            self._add(func, *sdpa_math_cost(*args[:3]), launches=SDPA_MATH_LAUNCHES)
            return out
        if func in FREE_OPS or func.is_view or not on_meta:
            return out
        results = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        written = sum(t.nbytes for t in results)
        if func in GATHERS:
            indices = sum(t.nbytes for t in tensors[1:] if not t.is_floating_point())
            read = written + indices
        elif func in SCATTERS:
            sources = tensors[1:]
            read = sum(t.nbytes for t in sources)
            written = max((t.nbytes for t in sources if t.is_floating_point()), default=0)
        else:
            read = sum(t.nbytes for t in tensors)
        self._add(func, read, written, self._flops(func, args, results), launches=1)
        return out

    def _on_launch(self, cost: LaunchCost) -> None:
        self._count(OpCount(f"triton:{cost.kind}", cost.kind, cost.read, cost.written,
                            cost.flops, cost.launches))

    def _add(self, func, read: int, written: int, flops: int, launches: int,
             syncs: int = 0) -> None:
        self._count(OpCount(str(func), _labels[-1], read, written, flops, launches, syncs))

    def _count(self, op: OpCount) -> None:
        self.ops.append(op)
        if _layer_depth[0]:
            self.layer_launches += op.launches

    @staticmethod
    def _flops(func, args, results: list[torch.Tensor]) -> int:
        if func in WEIGHT_PRODUCTS:  # x [..., K] @ weight [N, K].T
            return 2 * args[0].numel() * args[1].shape[0]
        if func in MATMULS:
            first, second = args[-2], args[-1]
            batch = first.shape[0] if first.dim() == 3 else 1
            return 2 * batch * first.shape[-2] * first.shape[-1] * second.shape[-1]
        return sum(t.numel() for t in results)  # elementwise: one per result element


SDPA_MATH_LAUNCHES = 7  # repeat K, repeat V, matmul, mask add, softmax, matmul, copy out


def sdpa_math_cost(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                   ) -> tuple[int, int, int]:
    """(read, written, FLOPs) of `scaled_dot_product_attention` on torch's math backend,
    where a float mask with grouped-query heads sends it on a GPU: K/V repeated to every
    query head, scores [B, H, Q, L] in fp32 written once and passed over five more times
    (mask add, softmax in and out, the second matmul)."""
    batch, heads, queries, head_dim = query.shape
    keys = key.shape[-2]
    repeated = 2 * batch * heads * keys * head_dim * key.element_size()
    scores = batch * heads * queries * keys * 4
    read = query.nbytes + key.nbytes + value.nbytes + repeated + 4 * scores
    written = repeated + 2 * scores + query.nbytes
    return read, written, 4 * batch * heads * queries * keys * head_dim


@contextmanager
def _label(kind: str) -> Iterator[None]:
    _labels.append(kind)
    try:
        yield
    finally:
        _labels.pop()


def _module_class(module: nn.Module, name: str) -> str | None:
    if isinstance(module, PagedAttention):
        return "attention"
    if isinstance(module, RMSNorm | RotaryEmbedding | Attention):  # Attention's own: rotary
        return "norms/rotary"
    if name.endswith("lm_head") or name.endswith("_proj"):
        return "linears"
    return None


def _pop_label(*_: object) -> None:  # a forward hook: returns None, keeps the output
    _labels.pop()


def _sampled_to_host(tensor: torch.Tensor) -> list:
    with _label("sampling"):
        return tensor.tolist()


@contextmanager
def classify_modules(model: nn.Module, sampler: nn.Module) -> Iterator[None]:
    """Labels ops by module while inside; LoRA deltas and the sampler get their own class."""
    handles = []
    labelled = [(module, _module_class(module, name)) for name, module in model.named_modules()]
    labelled.append((sampler, "sampling"))
    for module, kind in labelled:
        if kind is None:
            continue
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, kind=kind: _labels.append(kind)))
        handles.append(module.register_forward_hook(_pop_label))
    for module in model.modules():
        if isinstance(module, DecoderLayer):
            handles.append(module.register_forward_pre_hook(
                lambda *_: _layer_depth.__setitem__(0, _layer_depth[0] + 1)))
            handles.append(module.register_forward_hook(
                lambda *_: _layer_depth.__setitem__(0, _layer_depth[0] - 1)))
    apply = LoraBatch.apply
    copy_to_host = step_sampling.copy_to_host
    # the step's one device-to-host copy, without the pinned staging a meta tensor lacks:
    # `.tolist()` is counted as the sync it is
    step_sampling.copy_to_host = _sampled_to_host

    def labelled_apply(self, *args, **kwargs):
        with _label("lora"):
            return apply(self, *args, **kwargs)

    LoraBatch.apply = labelled_apply
    try:
        yield
    finally:
        LoraBatch.apply = apply
        step_sampling.copy_to_host = copy_to_host
        for handle in handles:
            handle.remove()
