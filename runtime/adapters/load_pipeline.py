"""Adapter loads on two worker budgets, so that no load can hold up another kind.

A remote source first downloads (network: seconds, or until a timeout when the endpoint
hangs) on the `download_workers` threads; parsing and pinning (local disk and CPU) run on
the `load_workers` threads. A local adapter, or a remote one already in the disk cache,
goes straight to the local budget, so it loads in its usual time behind any number of
slow or hung downloads. Every load has an overall deadline: `LoadTicket.expired` tells
the manager when to give up on it, and a ticket that was cancelled or expired never
publishes (a late download is released and dropped). A download stuck in a socket read
keeps its thread until the read timeout fires; the connect and read timeouts are
settings, so that time is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from loraplex.runtime.adapters.disk_cache import DiskCache, Fetched
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.loader import LoadOutcome, fetch_adapter, parse_adapter
from loraplex.runtime.adapters.source import AdapterSource, FetchLimits, SourceCredentials
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.torch_threads import background_pool

Publish = Callable[["LoadTicket", LoadOutcome], None]


@dataclass(eq=False)
class LoadTicket:
    """One load in flight; `publish` is called once with its outcome unless cancelled."""

    name: str
    deadline: float  # monotonic
    publish: Publish
    cancelled: threading.Event = field(default_factory=threading.Event)

    def expired(self, now: float) -> bool:
        return now > self.deadline

    def cancel(self) -> None:
        self.cancelled.set()


class LoadPipeline:
    def __init__(self, disk: DiskCache, target: LoraTargetShapes, max_rank: int,
                 dtype: torch.dtype, pin_memory: bool, download_workers: int,
                 load_workers: int,
                 limits: FetchLimits, deadline_s: float) -> None:
        self.disk = disk
        self.target = target
        self.max_rank = max_rank
        self.dtype = dtype  # of the packed host weights: the serving dtype
        self.pin_memory = pin_memory
        self.limits = limits
        self.deadline_s = deadline_s
        self._downloads = background_pool(download_workers, "adapter-download")
        self._local = background_pool(load_workers, "adapter-load")

    def start(self, name: str, source: AdapterSource, credentials: SourceCredentials | None,
              publish: Publish) -> LoadTicket:
        ticket = LoadTicket(name, time.monotonic() + self.deadline_s, publish)
        if source.is_remote and DiskCache.key(source) not in self.disk:
            self._downloads.submit(self._download, ticket, source, credentials)
        else:
            self._local.submit(self._parse, ticket, source, credentials, None)
        return ticket

    def close(self) -> None:
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._local.shutdown(wait=False, cancel_futures=True)

    def _download(self, ticket: LoadTicket, source: AdapterSource,
                  credentials: SourceCredentials | None) -> None:
        if ticket.cancelled.is_set():
            return
        fetched = fetch_adapter(ticket.name, source, credentials, self.disk, self.limits)
        if isinstance(fetched, AdapterError):
            self._finish(ticket, LoadOutcome(None, fetched, None, 0.0))
        elif ticket.cancelled.is_set():
            self.disk.release(fetched.key)
        else:
            self._local.submit(self._parse, ticket, source, credentials, fetched)

    def _parse(self, ticket: LoadTicket, source: AdapterSource,
               credentials: SourceCredentials | None, fetched: Fetched | None) -> None:
        if ticket.cancelled.is_set():
            if fetched is not None:
                self.disk.release(fetched.key)
            return
        if source.is_remote and fetched is None:  # in the disk cache: only a hold to take
            fetched = fetch_adapter(ticket.name, source, credentials, self.disk, self.limits)
            if isinstance(fetched, AdapterError):
                self._finish(ticket, LoadOutcome(None, fetched, None, 0.0))
                return
        self._finish(ticket, parse_adapter(ticket.name, source, fetched, self.disk,
                                           self.target, self.max_rank, self.dtype,
                                           self.pin_memory))

    @staticmethod
    def _finish(ticket: LoadTicket, outcome: LoadOutcome) -> None:
        if not ticket.cancelled.is_set():
            ticket.publish(ticket, outcome)
