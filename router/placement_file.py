"""Follows the placement table as a file: the operator's ConfigMap mounted in the router's
pod. Kubernetes swaps a mounted ConfigMap's files atomically (a symlink flip); the file is
read on every poll and parsed when its bytes changed (a table of thousands of adapters is
a few hundred KiB: cheap to read, and no mtime granularity can hide a change). A missing
or invalid file keeps the last good table: the router never forgets pods because of a
bad write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from loraplex.contracts.placements import PlacementError, PlacementTable, parse_placements
from loraplex.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class PlacementFile:
    def __init__(self, path: str, on_table: Callable[[PlacementTable], None],
                 metrics: RouterMetrics, *, interval_s: float) -> None:
        self.path = path
        self.on_table = on_table
        self.metrics = metrics
        self.interval_s = interval_s
        self._content: bytes | None = None  # the bytes last read
        self._unreadable = False  # reported as unreadable, until it can be read again

    def check(self) -> bool:
        """Re-read the file; True when a new table was applied."""
        try:
            with open(self.path, "rb") as handle:
                content = handle.read()
        except OSError as error:
            if not self._unreadable:
                log.warning("placement file %s unreadable: %s", self.path, error)
                self.metrics.placement_reloads.labels("error").inc()
                self._unreadable, self._content = True, None
            return False
        self._unreadable = False
        if content == self._content:
            return False
        self._content = content
        try:
            table = parse_placements(content)
        except PlacementError as error:
            log.error("placement file %s rejected, keeping the last table: %s", self.path, error)
            self.metrics.placement_reloads.labels("error").inc()
            return False
        self.on_table(table)
        self.metrics.placement_reloads.labels("ok").inc()
        log.info("placement table generation %d: %d pods, %d adapters", table.generation,
                 len(table.pods), len(table.adapters))
        return True

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval_s)
