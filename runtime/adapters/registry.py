"""The adapters a pod knows by name: registrations, their sources and the dynamic policy.

The admin API and request handlers call it from any thread: `register` and `unregister`
(idempotent, answering at once while the tier mover loads in the background), `get` and
`list` (the admin API's `AdapterStatus` snapshots), `resolve` (a request's adapter id to a
registered name, registering an allowed dynamic source), and `state` and `on_device`,
which read one field under the lock without building a snapshot (the engine's admission
asks them for every waiting request). An adapter a request registered (dynamic) that
failed is forgotten `dynamic_failure_ttl_s` later: until then requests naming it get its
error at once, afterwards the next one tries again, and the table (and every per-adapter
metric) holds no trace of the many names a client may try.

A name re-registered with a new source retires the old record: requests still holding a
lease on it finish on the old weights, which are freed at the last release.
"""

from __future__ import annotations

import threading
import time

from loraplex.contracts.adapters import AdapterState, AdapterStatus, Preload
from loraplex.runtime.adapters.dynamic import (
    DynamicPolicy,
    dynamic_name,
    hub_guess,
    request_source,
)
from loraplex.runtime.adapters.errors import AdapterError, AdapterNotFound
from loraplex.runtime.adapters.naming import is_valid_adapter_name, validate_adapter_name
from loraplex.runtime.adapters.records import AdapterRecord
from loraplex.runtime.adapters.source import AdapterSource, SourceCredentials, parse_source
from loraplex.runtime.adapters.tier_mover import TierMover

MAX_FAILED_DYNAMIC = 1024  # failed dynamic adapters remembered at once (oldest go first)


def _preload(value: Preload | str | None) -> Preload | None:
    try:
        return None if value is None else Preload(value)
    except ValueError:
        raise AdapterError("bad_preload", f"preload must be one of "
                           f"{[p.value for p in Preload]} or unset, got {value!r}") from None


class AdapterRegistry:
    def __init__(self, mover: TierMover, policy: DynamicPolicy, lock: threading.RLock) -> None:
        self.mover = mover
        self.lock = lock
        self._policy = policy
        self._adapters: dict[str, AdapterRecord] = {}

    def register(self, name: str, source: str, pinned: bool = False,
                 preload: Preload | str | None = None,
                 credentials: SourceCredentials | None = None) -> AdapterStatus:
        """Add or update an adapter; loading starts in the background. Idempotent."""
        validate_adapter_name(name)
        parsed = parse_source(source)
        preload = _preload(preload)
        with self.lock:
            record = self._adapters.get(name)
            if record is not None and record.source.uri == parsed.uri:
                record.pinned, record.preload, record.dynamic = pinned, preload, False
                record.credentials = credentials or record.credentials
                self.mover.set_preload(record)
                reload = preload is not None and record.weights is None and not record.slot_ready
                if record.state is AdapterState.ERROR or reload:
                    self.mover.start_load(record)
            else:
                if record is not None:
                    self._retire(record)
                record = AdapterRecord(name, parsed, credentials, pinned, preload, dynamic=False)
                self.mover.set_preload(record)
                self._adapters[name] = record
                self.mover.start_load(record)
            info = record.info()
        self._sync_disk_pin(parsed)
        return info

    def unregister(self, name: str) -> str:
        """Remove an adapter: "removed" now, or "deferred" until its leases are released."""
        with self.lock:
            record = self._adapters.pop(name, None)
            if record is None:
                raise AdapterNotFound(f"adapter {name!r} is not registered")
            outcome = self._retire(record)
        self._sync_disk_pin(record.source)
        return outcome

    def get(self, name: str) -> AdapterStatus:
        with self.lock:
            self.expire()
            return self.live(name).info()

    def list(self) -> list[AdapterStatus]:
        with self.lock:
            self.expire()
            return [record.info() for record in self._adapters.values()]

    def state(self, name: str) -> AdapterState:
        with self.lock:
            return self.live(name).state

    def on_device(self, name: str) -> bool:
        """Whether the adapter's weights are in a device slot, copy finished."""
        with self.lock:
            record = self.live(name)
            return record.slot is not None and record.slot_ready

    def failed(self, name: str) -> str | None:
        """The error message when `name` cannot be served, else None."""
        with self.lock:
            self.expire()
            record = self.live(name)
            return str(record.error) if record.state is AdapterState.ERROR else None

    def resolve(self, adapter_id: str, adapter_source: str | None = None,
                api_token: str | None = None) -> str:
        """The registered name a request's adapter refers to, registering allowed sources."""
        if not adapter_id:
            raise AdapterError("bad_name", "adapter id must not be empty")
        with self.lock:  # a registered name wins; "hub" is what LoRAX clients send by default
            self.expire()
            if adapter_source in (None, "", "hub") and adapter_id in self._adapters:
                return adapter_id
        source = request_source(adapter_id, adapter_source)
        if source is None and self._policy.enabled:
            source = hub_guess(adapter_id)
        if source is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} is not registered")
        with self.lock:
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
            self.mover.start_load(record)
            return name

    def live(self, name: str) -> AdapterRecord:
        """The current record of `name` (call with the lock held)."""
        record = self._adapters.get(name)
        if record is None:
            raise AdapterNotFound(f"adapter {name!r} is not registered")
        return record

    def _retire(self, record: AdapterRecord) -> str:
        self.mover.retire(record)
        if record.refcount > 0:
            return "deferred"
        self.mover.drop(record)
        return "removed"

    def expire(self) -> None:
        """Fail loads past their deadline; forget dynamic adapters that failed long ago
        (call with the lock held)."""
        self.mover.expire_loads()
        now = time.monotonic()
        ttl = self.mover.config.dynamic_failure_ttl_s
        failed = self.mover.failed_dynamic
        while failed:
            name, record = next(iter(failed.items()))
            if now - record.error_at <= ttl and len(failed) <= MAX_FAILED_DYNAMIC:
                break
            del failed[name]
            if (self._adapters.get(name) is record and record.state is AdapterState.ERROR
                    and record.dynamic):
                del self._adapters[name]
                self._retire(record)

    def _sync_disk_pin(self, source: AdapterSource) -> None:
        """Pin a downloaded folder while any registration of its source is pinned."""
        if not source.is_remote:
            return
        with self.lock:
            pinned = any(r.pinned for r in self._adapters.values()
                         if r.source.uri == source.uri)
        self.mover.pin_on_disk(source, pinned)
