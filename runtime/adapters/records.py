"""What the manager knows about each adapter, and the read-only views it hands out.

`AdapterRecord` is the manager's mutable state for one registration (guarded by the
manager's lock); its `info()` is the admin API's `AdapterStatus` (an immutable snapshot,
also read by the metrics);
`AdapterLease` is what the engine holds while a sequence runs on an adapter. A lease points
at the record it was taken on, so re-registering a name with a new source while requests
still run never releases the wrong registration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from loraplex.contracts.adapters import AdapterState, AdapterStatus, Preload
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.load_pipeline import LoadTicket
from loraplex.runtime.adapters.slots import SlotCopy
from loraplex.runtime.adapters.source import AdapterSource, SourceCredentials
from loraplex.runtime.adapters.weights import AdapterWeights


@dataclass(eq=False)
class AdapterRecord:
    name: str
    source: AdapterSource
    credentials: SourceCredentials | None
    pinned: bool
    preload: Preload | None
    dynamic: bool
    state: AdapterState = AdapterState.DOWNLOADING
    error: AdapterError | None = None
    error_at: float = 0.0  # monotonic
    digest: str | None = None
    rank: int | None = None
    size_bytes: int | None = None
    weights: AdapterWeights | None = None  # host tier
    load: LoadTicket | None = None  # fetch + parse in flight
    slot: int | None = None
    slot_copy: SlotCopy | None = None  # set while the slot is being written
    slot_ready: bool = False
    copy_started: float = 0.0
    refcount: int = 0
    retired: bool = False  # unregistered or replaced; freed at the last release
    last_used: float = field(default_factory=time.monotonic)
    last_used_wall: float | None = None

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.last_used_wall = time.time()

    def info(self) -> AdapterStatus:
        return AdapterStatus(
            name=self.name,
            source=self.source.uri,
            state=self.state,
            rank=self.rank,
            size_bytes=self.size_bytes,
            digest=self.digest,
            error=str(self.error) if self.error else None,
            error_reason=self.error.reason if self.error else None,
            pinned=self.pinned,
            preload=self.preload,
            dynamic=self.dynamic,
            slot=self.slot if self.slot_ready else None,
            in_use=self.refcount,
            last_used=self.last_used_wall,
        )


@dataclass(eq=False)
class AdapterLease:
    """Held by a running sequence; give it back with `AdapterManager.release(lease)`."""

    name: str
    slot: int | None
    record: AdapterRecord = field(repr=False)
    released: bool = False
