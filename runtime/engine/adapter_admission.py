"""Which waiting requests may join the batch as far as their adapter is concerned.

A request waits only for its own adapter. Each step the scheduler asks `admit(seq)` for
waiting sequences in arrival order: a base-model request is always admissible; one whose
adapter is on the device takes a lease (so the adapter cannot be evicted while it runs)
and its slot; one whose adapter is not resident starts or continues the load
(`DeviceLeases.want`, which never blocks) and stays waiting, without holding up the
requests behind it. A failed adapter raises its `AdapterError` for that request only.
States are read from the registry one field at a time, never as a snapshot.

Fair rotation when more adapters are wanted than there are device slots: an adapter's
*turn* starts when its first request is admitted and lasts while it has requests running.
Once a turn is older than `time_slice_s` and another adapter is starving (loaded, but no
slot is free for it), the resident adapter admits no new requests; its running requests
finish, its lease count drops to zero and its slot goes to the adapter that has waited
longest (FIFO by the time each started starving, as in LoRAX's adapter cycling). A
resident adapter whose turn has ended also stays out while an adapter that started
starving before it still waits, and it does not `want` its slot meanwhile (which would
keep the slot from looking idle).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from loraplex.contracts.adapters import AdapterState
from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.engine.sequence import Sequence


class AdapterAdmission:
    def __init__(self, manager: AdapterManager, time_slice_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if time_slice_s < 0:
            raise ValueError(f"time_slice_s must not be negative, got {time_slice_s}")
        self.leases = manager.leases
        self.registry = manager.registry
        self.time_slice_s = time_slice_s
        self._clock = clock
        self._now = clock()
        self._running: dict[str, int] = {}  # adapter -> sequences holding a lease
        self._turn_started: dict[str, float] = {}  # adapter -> start of its current turn
        self._starving: dict[str, float] = {}  # adapter -> when it started waiting for a slot
        self._starving_this_step: set[str] = set()
        self._resident: dict[str, bool] = {}  # per step cache

    def begin_step(self) -> None:
        """Advance finished copies; forget adapters that no longer wait for a slot."""
        self.leases.poll()
        self._now = self._clock()
        self._starving = {name: since for name, since in self._starving.items()
                          if name in self._starving_this_step}
        self._starving_this_step = set()
        self._resident = {}

    def admit(self, seq: Sequence) -> bool:
        """True when `seq` may run now (taking its lease); raises its adapter's error."""
        name = seq.adapter
        if name is None or seq.adapter_lease is not None:  # base model, or preempted
            return True
        if self._must_yield(name):
            self._mark_starving(name)
            return False
        slot = self.leases.want(name)
        if slot is None:
            if self.registry.state(name) is AdapterState.HOST:  # loaded; waits for a free slot
                self._mark_starving(name)
            return False
        seq.adapter_lease = self.leases.acquire(name)
        seq.lora_slot = slot
        self._starving.pop(name, None)
        self._starving_this_step.discard(name)
        self._running[name] = self._running.get(name, 0) + 1
        self._turn_started.setdefault(name, self._now)
        return True

    def release(self, seq: Sequence) -> None:
        """Give back a finished or aborted sequence's lease (no-op without one)."""
        lease, seq.adapter_lease, seq.lora_slot = seq.adapter_lease, None, -1
        if lease is None:
            return
        self.leases.release(lease)
        left = self._running.get(lease.name, 0) - 1
        if left > 0:
            self._running[lease.name] = left
        else:
            self._running.pop(lease.name, None)
            self._turn_started.pop(lease.name, None)

    def _mark_starving(self, name: str) -> None:
        self._starving.setdefault(name, self._now)
        self._starving_this_step.add(name)

    def _must_yield(self, name: str) -> bool:
        """Whether a resident adapter should let its slot go to one starving before it."""
        mine = self._starving.get(name, math.inf)
        earlier = any(other != name and since < mine for other, since in self._starving.items())
        if not earlier:
            return False
        started = self._turn_started.get(name)
        if started is not None and self._now - started < self.time_slice_s:
            return False
        return self._is_resident(name)

    def _is_resident(self, name: str) -> bool:
        if name not in self._resident:
            self._resident[name] = self.registry.on_device(name)
        return self._resident[name]
