"""What the manager knows about each adapter, and the read-only views it hands out.

`AdapterRecord` is the manager's mutable state for one registration (guarded by the
manager's lock); `AdapterInfo` is an immutable snapshot for the admin API and metrics;
`AdapterLease` is what the engine holds while a sequence runs on an adapter. A lease points
at the record it was taken on, so re-registering a name with a new source while requests
still run never releases the wrong registration.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.slots import SlotCopy
from loraplex.runtime.adapters.source import AdapterSource, SourceCredentials
from loraplex.runtime.adapters.weights import AdapterWeights

# downloading: a fetch/parse is running; disk: validated, evicted from RAM (reloads on use);
# host: parsed weights in (pinned) RAM; device: in a device slot; error: refused or failed.
STATES = ("downloading", "disk", "host", "device", "error")
PRELOADS = (None, "host", "device")


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    name: str
    source: str
    state: str
    rank: int | None
    size_bytes: int | None
    digest: str | None
    error: str | None
    error_reason: str | None
    pinned: bool
    preload: str | None
    dynamic: bool
    slot: int | None
    in_use: int  # sequences holding a lease
    last_used: float | None  # unix time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class AdapterRecord:
    name: str
    source: AdapterSource
    credentials: SourceCredentials | None
    pinned: bool
    preload: str | None
    dynamic: bool
    state: str = "downloading"
    error: AdapterError | None = None
    error_at: float = 0.0  # monotonic
    digest: str | None = None
    rank: int | None = None
    size_bytes: int | None = None
    disk_key: str | None = None
    weights: AdapterWeights | None = None  # host tier
    load: Future | None = None  # fetch + parse in flight
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

    def info(self) -> AdapterInfo:
        return AdapterInfo(
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
