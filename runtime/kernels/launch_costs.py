"""A hook through which kernel launchers report what each launch costs.

Triton kernels are opaque to torch: a `TorchDispatchMode` that counts bytes and FLOPs of
torch ops never sees them. So every Triton launcher reports its own launch here (bytes
read and written, FLOPs, kernel launches), computed from its arguments' shapes, and the
cost model of a step (`bench.step_model`) and the kernel benchmarks listen. Reporting is
skipped unless someone listens, so serving pays one list check per launch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchCost:
    kind: str  # op class, e.g. "attention", "lora"
    read: int  # bytes
    written: int  # bytes
    flops: int
    launches: int


_listeners: list[Callable[[LaunchCost], None]] = []


def recording() -> bool:
    return bool(_listeners)


def report_launch(kind: str, *, read: int, written: int, flops: int, launches: int) -> None:
    cost = LaunchCost(kind, read, written, flops, launches)
    for listener in _listeners:
        listener(cost)


@contextmanager
def listening(listener: Callable[[LaunchCost], None]) -> Iterator[None]:
    """Calls `listener` with each launch reported inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


@contextmanager
def recorded_launches() -> Iterator[list[LaunchCost]]:
    """Collects the launches reported inside the block, in order."""
    costs: list[LaunchCost] = []
    with listening(costs.append):
        yield costs
