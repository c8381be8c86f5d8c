"""What the router knows about one runtime pod: load, residency and whether it answers.

Load is what routing compares: the requests this router has in flight to the pod (exact,
current) plus the requests the pod had from others (other router replicas, direct
clients) at the last poll: its reported running + waiting minus this router's share then.
Counting the pod's whole reported queue on top of our own in-flight requests would count
ours twice and, being up to a poll old, make every router herd away from a pod and back.
Residency is the union of the adapters the pod last reported through its admin API and
those this router has seen it serve since that report (a pod keeps an adapter it just
served, until it says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class Pod:
    url: str
    in_flight: int = 0  # requests this router sent and has not finished relaying
    waiting: int = 0  # the pod's own queue depth, last poll
    running: int = 0  # sequences in the pod's batch, last poll
    foreign: int = 0  # of those, requests that were not this router's, last poll
    up: bool = True  # last contact (poll or request) reached the pod
    ready: bool = True  # last /ready answered 200
    resident: frozenset[str] = frozenset()  # adapters the pod reported (loading or loaded)
    served: set[str] = field(default_factory=set)  # adapters served here since that report
    base_model: str = ""  # the model id the pod reports, once known
    poll_timeouts: int = 0  # polls in a row that timed out

    @property
    def load(self) -> int:
        return self.in_flight + self.foreign

    def report_queue(self, running: int, waiting: int) -> None:
        self.running, self.waiting = running, waiting
        self.foreign = max(0, running + waiting - self.in_flight)

    @property
    def usable(self) -> bool:
        return self.up and self.ready

    def holds(self, adapter: str) -> bool:
        return adapter in self.resident or adapter in self.served

    def report_residency(self, adapters: frozenset[str]) -> None:
        """A fresh report from the pod replaces what the router had inferred."""
        self.resident = adapters
        self.served.clear()
