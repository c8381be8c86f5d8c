"""Moves adapters source → disk → host RAM → device slots without ever stalling the engine.

Two kinds of callers share one lock that is only held for bookkeeping, never for I/O:

- The engine loop (one thread, every few ms) calls `want`, `acquire`, `release` and
  `poll`. None of them waits for anything: `want(name)` returns the slot when the adapter
  is on the device and its copy has finished, otherwise it starts or continues the load
  and returns None, so the scheduler admits the request on a later step. Slots are handed
  out only on this thread, and only slots whose adapter holds no lease are ever reused.
- The admin API and request handlers call `register`, `unregister`, `resolve`, `get`,
  `list`, `stats` from any thread.

Loads run in the background on two worker budgets (`load_pipeline`): downloads on
`download_workers` threads, parsing and pinning on `load_workers`; copies into device
slots run on one more thread (they share one side stream anyway). So a slow or hung
download never delays an adapter that is on disk or in RAM, and a load that passes its
deadline fails instead of keeping its requests waiting. A failed adapter records its
`AdapterError` and everything else keeps serving. An adapter a request registered
(dynamic) that failed is forgotten `dynamic_failure_ttl_s` later: until then requests
naming it get its error at once, afterwards the next one tries again, and the table
(and every per-adapter metric) holds no trace of the many names a client may try.

An engine step uses it like this (`want` then `acquire` in the same step, so the slot it
returned cannot be handed to another adapter in between):

    manager.poll()
    for seq in waiting:                       # AdapterError from want: fail that request
        if (slot := manager.want(seq.adapter)) is not None:
            seq.lease = manager.acquire(seq.adapter)   # seq runs on `slot` from now on
    ...
    manager.release(seq.lease)                # when the sequence finishes or is aborted

Eviction: every tier is LRU; adapters holding leases and pinned adapters are never
evicted. An adapter wanted or used since the previous `poll()` (the engine polls once per
step) keeps its slot too, so two adapters competing for one slot do not evict each other
on every step, while a slot whose adapter went idle is free again one step later, however
short the steps (fair turns between competing adapters are the scheduler's job).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from loraplex.contracts.adapters import AdapterState, AdapterStatus, Preload, Tier
from loraplex.runtime.adapters.disk_cache import DiskCache
from loraplex.runtime.adapters.dynamic import (
    DynamicPolicy,
    dynamic_name,
    hub_guess,
    request_source,
)
from loraplex.runtime.adapters.errors import AdapterError, AdapterNotFound
from loraplex.runtime.adapters.load_pipeline import LoadPipeline, LoadTicket
from loraplex.runtime.adapters.loader import LoadOutcome
from loraplex.runtime.adapters.lru import LruBudget
from loraplex.runtime.adapters.naming import is_valid_adapter_name, validate_adapter_name
from loraplex.runtime.adapters.records import AdapterLease, AdapterRecord
from loraplex.runtime.adapters.slot_table import SlotTable
from loraplex.runtime.adapters.slots import DeviceSlotPool, SlotCopy
from loraplex.runtime.adapters.source import (
    AdapterSource,
    FetchLimits,
    SourceCredentials,
    parse_source,
)
from loraplex.runtime.adapters.stats import AdapterStats
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights
from loraplex.runtime.config import EngineConfig

log = logging.getLogger(__name__)
MAX_FAILED_DYNAMIC = 1024  # failed dynamic adapters remembered at once (oldest go first)


class AdapterManager:
    def __init__(self, config: EngineConfig, target: LoraTargetShapes,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
                 ) -> None:
        self.config = config
        self.target = target
        self.device = torch.device(device)
        self._last_poll = 0.0  # monotonic time of the latest poll()
        self._protect_since = 0.0  # ... and of the one before: slots used since are kept
        self.pool = DeviceSlotPool(target, config.device_slots, config.max_lora_rank, dtype,
                                   self.device)
        self.disk = DiskCache(Path(config.cache_dir) / "adapters", config.disk_bytes)
        self._policy = DynamicPolicy(config.allow_dynamic_adapters)
        self._host: LruBudget[AdapterRecord] = LruBudget(config.host_bytes)
        self._lock = threading.RLock()
        self._adapters: dict[str, AdapterRecord] = {}
        self._retiring: list[AdapterRecord] = []  # gone from the table, leases outstanding
        self._slots = SlotTable(config.device_slots)
        self._preloads: dict[str, AdapterRecord] = {}  # preload="device" not reached yet
        self._stats = AdapterStats()
        self._loading: set[AdapterRecord] = set()  # loads in flight (checked for deadlines)
        self._failed_dynamic: dict[str, AdapterRecord] = {}  # by name, oldest failure first
        self._pipeline = LoadPipeline(
            self.disk, target, config.max_lora_rank, dtype,
            pin_memory=self.device.type == "cuda",
            download_workers=config.download_workers, load_workers=config.load_workers,
            limits=FetchLimits(config.adapter_connect_timeout_s,
                               config.adapter_read_timeout_s),
            deadline_s=config.adapter_load_deadline_s)
        self._copies = ThreadPoolExecutor(1, thread_name_prefix="adapter-copy")

    # admin side ---------------------------------------------------------------------------

    def register(self, name: str, source: str, pinned: bool = False,
                 preload: Preload | str | None = None,
                 credentials: SourceCredentials | None = None) -> AdapterStatus:
        """Add or update an adapter; loading starts in the background. Idempotent."""
        validate_adapter_name(name)
        parsed = parse_source(source)
        try:
            preload = None if preload is None else Preload(preload)
        except ValueError:
            raise AdapterError("bad_preload", f"preload must be one of "
                               f"{[p.value for p in Preload]} or unset, got {preload!r}") from None
        with self._lock:
            record = self._adapters.get(name)
            if record is not None and record.source.uri == parsed.uri:
                record.pinned, record.preload, record.dynamic = pinned, preload, False
                record.credentials = credentials or record.credentials
                self._set_preload(record)
                reload = preload is not None and record.weights is None and not record.slot_ready
                if record.state is AdapterState.ERROR or reload:
                    self._start_load(record)
            else:
                if record is not None:
                    self._retire(record)
                record = AdapterRecord(name, parsed, credentials, pinned, preload, dynamic=False)
                self._set_preload(record)
                self._adapters[name] = record
                self._start_load(record)
            info = record.info()
        self._sync_disk_pin(parsed)
        return info

    def unregister(self, name: str) -> str:
        """Remove an adapter: "removed" now, or "deferred" until its leases are released."""
        with self._lock:
            record = self._adapters.pop(name, None)
            if record is None:
                raise AdapterNotFound(f"adapter {name!r} is not registered")
            outcome = self._retire(record)
        self._sync_disk_pin(record.source)
        return outcome

    def get(self, name: str) -> AdapterStatus:
        with self._lock:
            self._expire()
            return self._live(name).info()

    def list(self) -> list[AdapterStatus]:
        with self._lock:
            self._expire()
            return [record.info() for record in self._adapters.values()]

    def failed(self, name: str) -> str | None:
        """The error message when `name` cannot be served, else None."""
        with self._lock:
            self._expire()
            record = self._live(name)
            return str(record.error) if record.state is AdapterState.ERROR else None

    def resolve(self, adapter_id: str, adapter_source: str | None = None,
                api_token: str | None = None) -> str:
        """The registered name a request's adapter refers to, registering allowed sources."""
        if not adapter_id:
            raise AdapterError("bad_name", "adapter id must not be empty")
        with self._lock:  # a registered name wins; "hub" is what LoRAX clients send by default
            self._expire()
            if adapter_source in (None, "", "hub") and adapter_id in self._adapters:
                return adapter_id
        source = request_source(adapter_id, adapter_source)
        if source is None and self._policy.enabled:
            source = hub_guess(adapter_id)
        if source is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} is not registered")
        with self._lock:
            for record in self._adapters.values():
                if record.source.uri == source.uri:
                    return record.name
            if not self._policy.allows(source):
                raise AdapterNotFound(
                    f"adapter {adapter_id!r} is not registered, and loading {source.uri} on "
                    "request is not allowed (see --allow-dynamic-adapters)")
            name = adapter_id if (is_valid_adapter_name(adapter_id)
                                  and adapter_id not in self._adapters) else dynamic_name(source)
            credentials = SourceCredentials(hf_token=api_token) if api_token else None
            record = AdapterRecord(name, source, credentials, pinned=False, preload=None,
                                   dynamic=True)
            self._adapters[name] = record
            self._start_load(record)
            return name

    def stats(self) -> AdapterStats:
        with self._lock:
            self._expire()
            snapshot = self._stats.copy()
            on_device = self._slots.ready()
            snapshot.resident = {Tier.DISK: len(self.disk), Tier.HOST: len(self._host),
                                 Tier.DEVICE: len(on_device)}
            snapshot.resident_bytes = {Tier.DISK: self.disk.used_bytes,
                                       Tier.HOST: self._host.used_bytes,
                                       Tier.DEVICE: sum(r.size_bytes or 0 for r in on_device)}
            return snapshot

    def close(self) -> None:
        self._pipeline.close()
        self._copies.shutdown(wait=False, cancel_futures=True)

    # engine side: never blocks ------------------------------------------------------------

    def want(self, name: str) -> int | None:
        """The adapter's slot when it is ready on the device; else start its load, None.

        Raises `AdapterNotFound` for unknown names and the adapter's `AdapterError` when it
        failed. Call from the engine thread: this is where device slots are handed out.
        """
        with self._lock:
            self._expire_loads()
            record = self._live(name)
            self._raise_if_failed(record)
            record.touch()
            if record.slot is not None:
                self._refresh_copy(record)
                return record.slot if record.slot_ready else None
            if record.weights is None:
                self._start_load(record)
                return None
            self._host.touch(record)
            self._assign_slot(record)
            return None

    def acquire(self, name: str) -> AdapterLease:
        """Take a lease (per running sequence): the adapter stays resident until released."""
        with self._lock:
            record = self._live(name)
            self._raise_if_failed(record)
            record.refcount += 1
            record.touch()
            self._host.touch(record)
            if record.slot is not None:
                self._refresh_copy(record)
            return AdapterLease(name, record.slot if record.slot_ready else None, record)

    def release(self, lease: AdapterLease) -> None:
        with self._lock:
            if lease.released:
                raise ValueError(f"lease on adapter {lease.name!r} was already released")
            lease.released = True
            record = lease.record
            record.refcount -= 1
            record.touch()
            if record.retired and record.refcount == 0:
                self._drop(record)

    def poll(self) -> None:
        """Advance finished device copies and device preloads. Never blocks."""
        with self._lock:
            self._protect_since, self._last_poll = self._last_poll, time.monotonic()
            self._expire()
            for record in self._slots.copying():
                self._refresh_copy(record)
            for record in list(self._preloads.values()):
                if record.retired or record.state is AdapterState.ERROR \
                        or record.slot is not None:
                    continue
                if record.weights is None:
                    self._start_load(record)
                elif not self._assign_slot(record):
                    break

    # internals (hold the lock) ------------------------------------------------------------

    def _live(self, name: str) -> AdapterRecord:
        record = self._adapters.get(name)
        if record is None:
            raise AdapterNotFound(f"adapter {name!r} is not registered")
        return record

    @staticmethod
    def _raise_if_failed(record: AdapterRecord) -> None:
        # a fresh exception: re-raising one would grow its traceback
        if record.state is AdapterState.ERROR:
            raise AdapterError(record.error.reason, str(record.error))

    def _start_load(self, record: AdapterRecord) -> None:
        if record.load is not None:
            return
        record.state, record.error = AdapterState.DOWNLOADING, None
        self._failed_dynamic.pop(record.name, None)
        record.load = self._pipeline.start(
            record.name, record.source, record.credentials,
            lambda ticket, outcome: self._publish_from(record, ticket, outcome))
        self._loading.add(record)

    def _publish_from(self, record: AdapterRecord, ticket: LoadTicket,
                      outcome: LoadOutcome) -> None:
        """A load worker's outcome; dropped if the load was replaced or gave up meanwhile."""
        with self._lock:
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
            self._failed_dynamic.pop(record.name, None)
            self._failed_dynamic[record.name] = record

    def _expire(self) -> None:
        """Give up on loads past their deadline; forget dynamic adapters failed long ago."""
        self._expire_loads()
        now = time.monotonic()
        ttl = self.config.dynamic_failure_ttl_s
        while self._failed_dynamic:
            name, record = next(iter(self._failed_dynamic.items()))
            if (now - record.error_at <= ttl
                    and len(self._failed_dynamic) <= MAX_FAILED_DYNAMIC):
                break
            del self._failed_dynamic[name]
            if (self._adapters.get(name) is record and record.state is AdapterState.ERROR
                    and record.dynamic):
                del self._adapters[name]
                self._retire(record)

    def _expire_loads(self) -> None:
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

    def _admit_host(self, record: AdapterRecord) -> None:
        self._host.add(record, record.size_bytes or 0)
        for victim in self._host.victims(
                lambda r: r is not record and not r.pinned and r.refcount == 0):
            victim.weights = None
            if victim.state is AdapterState.HOST:
                victim.state = AdapterState.DISK
            self._stats.evictions[Tier.HOST] += 1

    def _assign_slot(self, record: AdapterRecord) -> bool:
        """Give `record` a slot (free, or the least recently used idle one); start the copy."""
        choice = self._slots.choose(self._protect_since, record.rank or 1,
                                     self.config.max_lora_rank)
        if choice is None:
            return False
        slot, victim = choice
        if victim is not None:
            self._slots.free(victim)
            victim.state = AdapterState.HOST if victim.weights is not None else AdapterState.DISK
            self._stats.evictions[Tier.DEVICE] += 1
        self._slots.assign(slot, record)
        record.copy_started = time.monotonic()
        fence = self.pool.fence()
        self._copies.submit(self._copy_job, record, slot, record.weights, fence)
        return True

    def _copy_job(self, record: AdapterRecord, slot: int, weights: AdapterWeights,
                  fence: Any) -> None:
        """Copy thread: write the slot (async on CUDA); `_refresh_copy` notices completion."""
        try:
            copy = self.pool.write(slot, weights, after=fence)
        except Exception as unexpected:  # keep the slot table consistent whatever happens
            log.exception("copying adapter %r into slot %d failed", record.name, slot)
            copy = SlotCopy()
            with self._lock:
                self._set_failed(record, AdapterError(
                    "load_failed", f"adapter {record.name!r}: copy to the device failed: "
                    f"{unexpected}"))
        with self._lock:
            record.slot_copy = copy

    def _refresh_copy(self, record: AdapterRecord) -> None:
        if record.slot_copy is None or not record.slot_copy.done():
            return
        record.slot_copy = None
        if record.state is AdapterState.ERROR or (record.retired and record.refcount == 0):
            self._slots.free(record)
            return
        record.slot_ready = True
        record.state = AdapterState.DEVICE
        self._preloads.pop(record.name, None)
        self._stats.record_load(Tier.DEVICE, time.monotonic() - record.copy_started)

    def _set_preload(self, record: AdapterRecord) -> None:
        if record.preload is Preload.DEVICE and not record.slot_ready:
            self._preloads[record.name] = record
        else:
            self._preloads.pop(record.name, None)

    def _retire(self, record: AdapterRecord) -> str:
        record.retired = True
        if self._preloads.get(record.name) is record:
            del self._preloads[record.name]
        if record.load is not None:
            record.load.cancel()
            record.load = None
        self._loading.discard(record)
        if self._failed_dynamic.get(record.name) is record:
            del self._failed_dynamic[record.name]
        if record.refcount > 0:
            self._retiring.append(record)
            return "deferred"
        self._drop(record)
        return "removed"

    def _drop(self, record: AdapterRecord) -> None:
        if record in self._retiring:
            self._retiring.remove(record)
        self._host.remove(record)
        record.weights = None
        if record.slot is not None and record.slot_ready:
            self._slots.free(record)
        # a copy still in flight frees its slot when `_refresh_copy` sees it finish

    def _sync_disk_pin(self, source: AdapterSource) -> None:
        """Pin a downloaded folder while any registration of its source is pinned."""
        if not source.is_remote:
            return
        with self._lock:
            pinned = any(r.pinned for r in self._adapters.values()
                         if r.source.uri == source.uri)
        self.disk.set_pinned(DiskCache.key(source), pinned)

