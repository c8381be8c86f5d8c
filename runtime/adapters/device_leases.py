"""The engine's side of the adapters: device slots for the batch, and leases that keep an
adapter resident while a sequence runs on it.

The engine loop (one thread, every few ms) calls `want`, `acquire`, `release` and `poll`.
None of them waits for anything: `want(name)` returns the slot when the adapter is on the
device and its copy has finished, otherwise it starts or continues the load and returns
None, so the scheduler admits the request on a later step. Slots are handed out only on
this thread, and only slots whose adapter holds no lease are ever reused. Use `want` then
`acquire` in the same step, so the slot it returned cannot go to another adapter between:

    leases.poll()
    for seq in waiting:                       # AdapterError from want: fail that request
        if (slot := leases.want(seq.adapter)) is not None:
            seq.lease = leases.acquire(seq.adapter)   # seq runs on `slot` from now on
    ...
    leases.release(seq.lease)                 # when the sequence finishes or is aborted

An adapter wanted or used since the previous `poll()` (the engine polls once per step)
keeps its slot, so two adapters competing for one slot do not evict each other on every
step, while a slot whose adapter went idle is free again one step later, however short
the steps (fair turns between competing adapters are the scheduler's job).
"""

from __future__ import annotations

import time

from loraplex.contracts.adapters import AdapterState
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.records import AdapterLease, AdapterRecord
from loraplex.runtime.adapters.registry import AdapterRegistry


def _raise_if_failed(record: AdapterRecord) -> None:
    # a fresh exception: re-raising one would grow its traceback
    if record.state is AdapterState.ERROR:
        raise AdapterError(record.error.reason, str(record.error))


class DeviceLeases:
    def __init__(self, registry: AdapterRegistry) -> None:
        self.registry = registry
        self.mover = registry.mover
        self.lock = registry.lock
        self._last_poll = 0.0  # monotonic time of the latest poll()
        self._protect_since = 0.0  # ... and of the one before: slots used since are kept

    def want(self, name: str) -> int | None:
        """The adapter's slot when it is ready on the device; else start its load, None.

        Raises `AdapterNotFound` for unknown names and the adapter's `AdapterError` when it
        failed. Call from the engine thread: this is where device slots are handed out.
        """
        with self.lock:
            self.mover.expire_loads()
            record = self.registry.live(name)
            _raise_if_failed(record)
            record.touch()
            if record.slot is not None:
                self.mover.refresh_copy(record)
                return record.slot if record.slot_ready else None
            if record.weights is None:
                self.mover.start_load(record)
                return None
            self.mover.touch_host(record)
            self.mover.assign_slot(record, self._protect_since)
            return None

    def acquire(self, name: str) -> AdapterLease:
        """Take a lease (per running sequence): the adapter stays resident until released."""
        with self.lock:
            record = self.registry.live(name)
            _raise_if_failed(record)
            record.refcount += 1
            record.touch()
            self.mover.touch_host(record)
            if record.slot is not None:
                self.mover.refresh_copy(record)
            return AdapterLease(name, record.slot if record.slot_ready else None, record)

    def release(self, lease: AdapterLease) -> None:
        with self.lock:
            if lease.released:
                raise ValueError(f"lease on adapter {lease.name!r} was already released")
            lease.released = True
            record = lease.record
            record.refcount -= 1
            record.touch()
            if record.retired and record.refcount == 0:
                self.mover.drop(record)

    def poll(self) -> None:
        """Advance finished device copies and device preloads. Never blocks."""
        with self.lock:
            self._protect_since, self._last_poll = self._last_poll, time.monotonic()
            self.registry.expire()
            self.mover.advance(self._protect_since)
