"""Moves adapter weights between tiers in the background: source → disk → host RAM →
device slot, and back down when a tier's budget is full.

Loads run on two worker budgets (`load_pipeline`): downloads on `download_workers`
threads, parsing and pinning on `load_workers`; copies into device slots run on one more
thread (they share one side stream anyway). So a slow or hung download never delays an
adapter that is on disk or in RAM, and a load that passes its deadline fails instead of
keeping its requests waiting. A failed load records its `AdapterError` on the record and
everything else keeps serving. Every tier is LRU; adapters holding leases and pinned
adapters are never evicted.

The mover keeps no names: it is handed records (by the registry and the device leases)
and every method is called with the shared lock held, except the worker jobs, which take
it only to publish what they did.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from loraplex.contracts.adapters import AdapterState, Preload, Tier
from loraplex.runtime.adapters.disk_cache import DiskCache
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.load_pipeline import LoadPipeline, LoadTicket
from loraplex.runtime.adapters.loader import LoadOutcome
from loraplex.runtime.adapters.lru import LruBudget
from loraplex.runtime.adapters.records import AdapterRecord
from loraplex.runtime.adapters.slot_table import SlotTable
from loraplex.runtime.adapters.slots import DeviceSlotPool, SlotCopy
from loraplex.runtime.adapters.source import AdapterSource, FetchLimits
from loraplex.runtime.adapters.stats import AdapterStats
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.torch_threads import background_pool

log = logging.getLogger(__name__)


class TierMover:
    def __init__(self, config: EngineConfig, target: LoraTargetShapes, device: torch.device,
                 dtype: torch.dtype, lock: threading.RLock) -> None:
        self.config = config
        self.target = target
        self.device = device
        self.lock = lock
        self.pool = DeviceSlotPool(target, config.device_slots, config.max_lora_rank, dtype,
                                   device)
        self.disk = DiskCache(Path(config.cache_dir) / "adapters", config.disk_bytes)
        self.slots = SlotTable(config.device_slots)
        self._host: LruBudget[AdapterRecord] = LruBudget(config.host_bytes)
        self._preloads: dict[str, AdapterRecord] = {}  # preloaded to the device, not there yet
        self._stats = AdapterStats()
        self._loading: set[AdapterRecord] = set()  # loads in flight (checked for deadlines)
        # dynamic adapters whose load failed, by name, oldest failure first (the registry
        # forgets them after a while)
        self.failed_dynamic: dict[str, AdapterRecord] = {}
        self._pipeline = LoadPipeline(
            self.disk, target, config.max_lora_rank, dtype,
            pin_memory=device.type == "cuda",
            download_workers=config.download_workers, load_workers=config.load_workers,
            limits=FetchLimits(config.adapter_connect_timeout_s,
                               config.adapter_read_timeout_s),
            deadline_s=config.adapter_load_deadline_s)
        self._copies = background_pool(1, "adapter-copy")

    def stats(self) -> AdapterStats:
        with self.lock:
            snapshot = self._stats.copy()
            on_device = self.slots.ready()
            snapshot.resident = {Tier.DISK: len(self.disk), Tier.HOST: len(self._host),
                                 Tier.DEVICE: len(on_device)}
            snapshot.resident_bytes = {Tier.DISK: self.disk.used_bytes,
                                       Tier.HOST: self._host.used_bytes,
                                       Tier.DEVICE: sum(r.size_bytes or 0 for r in on_device)}
            return snapshot

    def close(self) -> None:
        self._pipeline.close()
        self._copies.shutdown(wait=False, cancel_futures=True)

    def pin_on_disk(self, source: AdapterSource, pinned: bool) -> None:
        """Keep a downloaded folder from eviction while a registration of it is pinned."""
        self.disk.set_pinned(DiskCache.key(source), pinned)

    # with the lock held ---------------------------------------------------------------

    def start_load(self, record: AdapterRecord) -> None:
        """Fetch and parse into host RAM in the background (no-op while one runs)."""
        if record.load is not None:
            return
        record.state, record.error = AdapterState.DOWNLOADING, None
        self.failed_dynamic.pop(record.name, None)
        record.load = self._pipeline.start(
            record.name, record.source, record.credentials,
            lambda ticket, outcome: self._publish_from(record, ticket, outcome))
        self._loading.add(record)

    def expire_loads(self) -> None:
        """Fail the loads that passed their deadline."""
        if not self._loading:
            return
        now = time.monotonic()
        for record in [r for r in self._loading if r.load is not None and r.load.expired(now)]:
            record.load.cancel()
            record.load = None
            self._loading.discard(record)
            log.warning("adapter %r did not load within %.0f s; giving up", record.name,
                        self.config.adapter_load_deadline_s)
            self._set_failed(record, AdapterError(
                "load_timeout", f"adapter {record.name!r} ({record.source.uri}) did not load "
                f"within {self.config.adapter_load_deadline_s:g} s"))

    def touch_host(self, record: AdapterRecord) -> None:
        self._host.touch(record)

    def set_preload(self, record: AdapterRecord) -> None:
        if record.preload is Preload.DEVICE and not record.slot_ready:
            self._preloads[record.name] = record
        else:
            self._preloads.pop(record.name, None)

    def advance(self, protect_since: float) -> None:
        """Publish finished device copies; move device preloads on. Never blocks."""
        for record in self.slots.copying():
            self.refresh_copy(record)
        for record in list(self._preloads.values()):
            if record.retired or record.state is AdapterState.ERROR or record.slot is not None:
                continue
            if record.weights is None:
                self.start_load(record)
            elif not self.assign_slot(record, protect_since):
                break

    def assign_slot(self, record: AdapterRecord, protect_since: float) -> bool:
        """Give `record` a slot (free, or the least recently used idle one, unless used
        since `protect_since`) and start the copy; False when none can be had."""
        choice = self.slots.choose(protect_since, record.rank or 1, self.config.max_lora_rank)
        if choice is None:
            return False
        slot, victim = choice
        if victim is not None:
            self.slots.free(victim)
            victim.state = AdapterState.HOST if victim.weights is not None else AdapterState.DISK
            self._stats.evictions[Tier.DEVICE] += 1
        self.slots.assign(slot, record)
        record.copy_started = time.monotonic()
        fence = self.pool.fence()
        self._copies.submit(self._copy_job, record, slot, record.weights, fence)
        return True

    def refresh_copy(self, record: AdapterRecord) -> None:
        """Mark the record's slot ready once its copy has finished."""
        if record.slot_copy is None or not record.slot_copy.done():
            return
        record.slot_copy = None
        if record.state is AdapterState.ERROR or (record.retired and record.refcount == 0):
            self.slots.free(record)
            return
        record.slot_ready = True
        record.state = AdapterState.DEVICE
        self._preloads.pop(record.name, None)
        self._stats.record_load(Tier.DEVICE, time.monotonic() - record.copy_started)

    def retire(self, record: AdapterRecord) -> None:
        """Stop moving a record that left the registry (its load is cancelled)."""
        record.retired = True
        if self._preloads.get(record.name) is record:
            del self._preloads[record.name]
        if record.load is not None:
            record.load.cancel()
            record.load = None
        self._loading.discard(record)
        if self.failed_dynamic.get(record.name) is record:
            del self.failed_dynamic[record.name]

    def drop(self, record: AdapterRecord) -> None:
        """Free a retired record's weights from every tier (no lease holds it any more)."""
        self._host.remove(record)
        record.weights = None
        if record.slot is not None and record.slot_ready:
            self.slots.free(record)
        # a copy still in flight frees its slot when `refresh_copy` sees it finish

    # worker threads -------------------------------------------------------------------

    def _publish_from(self, record: AdapterRecord, ticket: LoadTicket,
                      outcome: LoadOutcome) -> None:
        """A load worker's outcome; dropped if the load was replaced or gave up meanwhile."""
        with self.lock:
            if record.load is ticket:
                self._publish_load(record, outcome)

    def _publish_load(self, record: AdapterRecord, outcome: LoadOutcome) -> None:
        record.load = None
        self._loading.discard(record)
        if record.retired:
            return
        if outcome.fetched is not None and outcome.fetched.downloaded:
            self._stats.record_load(Tier.DISK, outcome.fetched.seconds)
        if outcome.error is not None:
            log.warning("adapter %r refused: %s", record.name, outcome.error)
            self._set_failed(record, outcome.error)
            return
        weights = outcome.weights
        self._stats.record_load(Tier.HOST, outcome.parse_seconds)
        record.weights, record.digest, record.rank = weights, weights.digest, weights.rank
        record.size_bytes = weights.size_bytes
        record.state = AdapterState.DEVICE if record.slot_ready else AdapterState.HOST
        self._admit_host(record)

    def _set_failed(self, record: AdapterRecord, error: AdapterError) -> None:
        record.state, record.error = AdapterState.ERROR, error
        record.error_at = time.monotonic()
        self._stats.failures += 1
        if record.dynamic:
            self.failed_dynamic.pop(record.name, None)
            self.failed_dynamic[record.name] = record

    def _admit_host(self, record: AdapterRecord) -> None:
        self._host.add(record, record.size_bytes or 0)
        for victim in self._host.victims(
                lambda r: r is not record and not r.pinned and r.refcount == 0):
            victim.weights = None
            if victim.state is AdapterState.HOST:
                victim.state = AdapterState.DISK
            self._stats.evictions[Tier.HOST] += 1

    def _copy_job(self, record: AdapterRecord, slot: int, weights: AdapterWeights,
                  fence: Any) -> None:
        """Copy thread: write the slot (async on CUDA); `refresh_copy` notices completion."""
        try:
            copy = self.pool.write(slot, weights, after=fence)
        except Exception as unexpected:  # keep the slot table consistent whatever happens
            log.exception("copying adapter %r into slot %d failed", record.name, slot)
            copy = SlotCopy()
            with self.lock:
                self._set_failed(record, AdapterError(
                    "load_failed", f"adapter {record.name!r}: copy to the device failed: "
                    f"{unexpected}"))
        with self.lock:
            record.slot_copy = copy
