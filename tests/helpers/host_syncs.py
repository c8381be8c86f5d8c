"""Count the points where the host waits for the device (to read a value or a shape).

On a GPU these block the CPU until the queued kernels finish. The counter sees them on
any device, the CPU included, so the CPU engine's tests can bound them: Python reads of
tensor values (`tolist`, `item`, `bool(t)`, `int(t)`, `cpu`, `numpy`), blocking copies
to the host, and the operators whose output shape depends on values (boolean-mask
indexing, `nonzero`, `masked_select`, `unique`, `repeat_interleave` without a size).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
READS = {"tolist", "cpu", "numpy"}  # Python-level reads (item/bool/int go via aten below)
VALUE_SHAPED = {aten._local_scalar_dense.default, aten.nonzero.default,
                aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
                aten.unique_consecutive.default}


def _has_bool_index(indices) -> bool:
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool
               for index in indices)


def _blocking_copy_to_host(func, args: tuple, kwargs: dict) -> bool:
    if func is aten._to_copy.default:
        target = kwargs.get("device")
        return (target is not None and torch.device(target).type == "cpu"
                and args[0].device.type != "cpu" and not kwargs.get("non_blocking", False))
    if func is aten.copy_.default:
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return (args[0].device.type == "cpu" and args[1].device.type != "cpu"
                and not non_blocking)
    return False


class _FunctionReads(TorchFunctionMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in READS:
            self.counts[name] += 1
        return func(*args, **kwargs)


class _DispatchWaits(TorchDispatchMode):
    def __init__(self, counts: Counter) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in VALUE_SHAPED:
            self.counts[str(func)] += 1
        elif func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            if _has_bool_index(args[1]):
                self.counts[f"{func} with a boolean mask"] += 1
        elif func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.counts[str(func)] += 1
        elif _blocking_copy_to_host(func, args, kwargs):
            self.counts["blocking copy to the host"] += 1
        return func(*args, **kwargs)


class HostSyncCounter:
    """`with HostSyncCounter() as syncs: ...`, then `syncs.total` and `syncs.counts`."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._modes = (_FunctionReads(self.counts), _DispatchWaits(self.counts))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> HostSyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc_info)
