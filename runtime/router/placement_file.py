"""Follows the placement table as a file: the operator's ConfigMap mounted in the router's
pod. Kubernetes swaps a mounted ConfigMap's files atomically (a symlink flip), so the
file is re-read whenever its (inode, size, mtime) changes. A missing or invalid file
keeps the last good table: the router never forgets pods because of a bad write.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from loraplex.runtime.router.metrics import RouterMetrics
from loraplex.runtime.router.placements import PlacementError, PlacementTable, parse_placements

log = logging.getLogger(__name__)


class PlacementFile:
    def __init__(self, path: str, on_table: Callable[[PlacementTable], None],
                 metrics: RouterMetrics, *, interval_s: float) -> None:
        self.path = path
        self.on_table = on_table
        self.metrics = metrics
        self.interval_s = interval_s
        self._signature: tuple[int, int, int] | None = None

    def check(self) -> bool:
        """Re-read the file if it changed; True when a new table was applied."""
        try:
            stat = os.stat(self.path)
        except OSError as error:
            if self._signature != (0, 0, 0):
                log.warning("placement file %s unreadable: %s", self.path, error)
                self.metrics.placement_reloads.labels("error").inc()
                self._signature = (0, 0, 0)
            return False
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            with open(self.path, "rb") as handle:
                table = parse_placements(handle.read())
        except (OSError, PlacementError) as error:
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
