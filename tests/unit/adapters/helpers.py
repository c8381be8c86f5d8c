"""Polling helpers: the manager never blocks, so tests poll it the way the engine does."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from loraplex.runtime.adapters.manager import AdapterManager


def wait_until(predicate: Callable[[], object], timeout: float = 20.0,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def wait_state(manager: AdapterManager, name: str, states: Iterable[str],
               timeout: float = 20.0) -> str:
    states = tuple(states)
    wait_until(lambda: manager.get(name).state in states, timeout,
               f"{name} to reach {states} (now {manager.get(name).state})")
    return manager.get(name).state


def wait_on_device(manager: AdapterManager, name: str, timeout: float = 20.0) -> int:
    """Call `want` like the engine loop does until the adapter has a ready slot."""
    slot: list[int | None] = [None]

    def ready() -> bool:
        manager.poll()
        slot[0] = manager.want(name)
        return slot[0] is not None

    wait_until(ready, timeout, f"{name} on the device")
    return slot[0]
