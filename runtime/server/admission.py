"""Bounded admission: how many sequences may be in the server at once, and draining.

The engine runs at most `max_num_seqs` sequences in a batch; a request beyond that waits
in its queue. Letting that queue grow without bound only converts overload into timeouts,
so the server admits at most `max_num_seqs + max_waiting` sequences (a `best_of`/`n`
request counts once per sequence) and answers the rest 429 with `Retry-After` at once,
which lets a router or client go elsewhere. On SIGTERM the gate stops admitting (503) and
`wait_idle` lets in-flight work finish.
"""

from __future__ import annotations

import asyncio

from loraplex.runtime.server.errors import NotReady, Overloaded, ValidationFailed

RETRY_AFTER_S = 1


class Lease:
    """Admission of `size` sequences; `release` is idempotent so every exit path may call it."""

    def __init__(self, gate: AdmissionGate, size: int) -> None:
        self._gate = gate
        self.size = size
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._give_back(self.size)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class AdmissionGate:
    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError(f"need max_running >= 1 and max_waiting >= 0, got "
                             f"{max_running} and {max_waiting}")
        self.capacity = max_running + max_waiting
        self.in_flight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self, size: int = 1) -> Lease:
        """Take `size` sequence slots, or raise `Overloaded` (429) or `NotReady` (503)."""
        if self.draining:
            raise NotReady("the server is shutting down; retry on another replica")
        if size > self.capacity:
            raise ValidationFailed(f"a request for {size} sequences can never be served: "
                                   f"this server admits at most {self.capacity} at once")
        if self.in_flight + size > self.capacity:
            raise Overloaded(f"server overloaded: {self.in_flight} sequences in flight, "
                             f"limit {self.capacity}; retry later",
                             headers={"Retry-After": str(RETRY_AFTER_S)})
        self.in_flight += size
        self._idle.clear()
        return Lease(self, size)

    def _give_back(self, size: int) -> None:
        self.in_flight -= size
        if self.in_flight == 0:
            self._idle.set()

    def start_draining(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight, False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True
