"""Counters of adapter movement between tiers, for the Prometheus exporter.

The manager increments these under its lock; `AdapterManager.stats()` returns a copy, so
the metrics endpoint never reads a half-updated set. Tiers are `disk` (downloads), `host`
(parses into RAM) and `device` (copies into slots).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplex.contracts.adapters import Tier


def _per_tier(value: float = 0) -> dict[Tier, float]:
    return dict.fromkeys(Tier, value)


@dataclass
class AdapterStats:
    loads: dict[Tier, float] = field(default_factory=_per_tier)
    load_seconds: dict[Tier, float] = field(default_factory=_per_tier)
    evictions: dict[Tier, float] = field(default_factory=_per_tier)
    failures: int = 0  # loads that ended in an error
    resident: dict[Tier, float] = field(default_factory=_per_tier)  # adapters per tier, now
    resident_bytes: dict[Tier, float] = field(default_factory=_per_tier)

    def record_load(self, tier: Tier, seconds: float) -> None:
        self.loads[tier] += 1
        self.load_seconds[tier] += seconds

    def copy(self) -> AdapterStats:
        return AdapterStats(dict(self.loads), dict(self.load_seconds), dict(self.evictions),
                            self.failures, dict(self.resident), dict(self.resident_bytes))
