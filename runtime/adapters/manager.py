"""The adapter subsystem of one engine, built from its three parts, which share one lock
that is held only for bookkeeping, never for I/O:

- `AdapterRegistry` (registry.py): names, sources and the dynamic policy; what the admin
  API and request handlers call, from any thread.
- `TierMover` (tier_mover.py): moves weights source → disk → host RAM → device slots in
  the background, and evicts (LRU per tier) when a budget is full.
- `DeviceLeases` (device_leases.py): what the engine loop calls every step; never blocks.

`AdapterManager` only builds them and forwards each call to the part whose job it is, so
that callers hold one object; it keeps no state of its own.
"""

from __future__ import annotations

import threading

import torch

from loraplex.contracts.adapters import AdapterStatus, Preload
from loraplex.runtime.adapters.device_leases import DeviceLeases
from loraplex.runtime.adapters.dynamic import DynamicPolicy
from loraplex.runtime.adapters.records import AdapterLease
from loraplex.runtime.adapters.registry import AdapterRegistry
from loraplex.runtime.adapters.source import SourceCredentials
from loraplex.runtime.adapters.stats import AdapterStats
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.adapters.tier_mover import TierMover
from loraplex.runtime.config import EngineConfig


class AdapterManager:
    def __init__(self, config: EngineConfig, target: LoraTargetShapes,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                 ) -> None:
        lock = threading.RLock()
        self.config = config
        self.target = target
        self.device = torch.device(device)
        self.mover = TierMover(config, target, self.device, dtype, lock)
        self.registry = AdapterRegistry(self.mover, DynamicPolicy(config.allow_dynamic_adapters),
                                        lock)
        self.leases = DeviceLeases(self.registry)
        self.pool = self.mover.pool
        self.disk = self.mover.disk

    # the registry: admin API and request handlers, any thread

    def register(self, name: str, source: str, pinned: bool = False,
                 preload: Preload | str | None = None,
                 credentials: SourceCredentials | None = None) -> AdapterStatus:
        return self.registry.register(name, source, pinned, preload, credentials)

    def unregister(self, name: str) -> str:
        return self.registry.unregister(name)

    def get(self, name: str) -> AdapterStatus:
        return self.registry.get(name)

    def list(self) -> list[AdapterStatus]:
        return self.registry.list()

    def failed(self, name: str) -> str | None:
        return self.registry.failed(name)

    def resolve(self, adapter_id: str, adapter_source: str | None = None,
                api_token: str | None = None) -> str:
        return self.registry.resolve(adapter_id, adapter_source, api_token)

    # the device leases: the engine loop

    def want(self, name: str) -> int | None:
        return self.leases.want(name)

    def acquire(self, name: str) -> AdapterLease:
        return self.leases.acquire(name)

    def release(self, lease: AdapterLease) -> None:
        self.leases.release(lease)

    def poll(self) -> None:
        self.leases.poll()

    # the tier mover

    def stats(self) -> AdapterStats:
        with self.registry.lock:
            self.registry.expire()
        return self.mover.stats()

    def close(self) -> None:
        self.mover.close()
