"""One adapter load, in the two stages the load workers run: fetch, then parse.

`fetch_adapter` is the remote part (download into the disk cache: network time, possibly
long or hung); `parse_adapter` is the local part (read and check the PEFT files, pin the
weights). They run on separate worker budgets (see `load_pipeline`), so downloads never
hold up adapters that are already on disk. Blocking work only, no shared state besides
the disk cache; every failure becomes an `AdapterError` in the outcome and nothing
escapes the worker thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.runtime.adapters.disk_cache import DiskCache, Fetched
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.source import AdapterSource, FetchLimits, SourceCredentials
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    weights: AdapterWeights | None
    error: AdapterError | None
    fetched: Fetched | None  # None for local folders, which are read in place
    parse_seconds: float


def _where(name: str, source: AdapterSource) -> str:
    return f"adapter {name!r} ({source.uri})"


def _unexpected(where: str, error: Exception) -> AdapterError:
    log.error("loading %s failed", where, exc_info=error)
    return AdapterError("load_failed", f"{where}: {type(error).__name__}: {error}")


def fetch_adapter(name: str, source: AdapterSource, credentials: SourceCredentials | None,
                  disk: DiskCache, limits: FetchLimits) -> Fetched | AdapterError:
    """The remote source's folder in the disk cache (held: `disk.release` it), or why not."""
    try:
        return disk.fetch(source, credentials, limits)
    except AdapterError as refused:
        return refused
    except Exception as unexpected:  # a bug or an OS error must not escape the worker
        return _unexpected(_where(name, source), unexpected)


def parse_adapter(name: str, source: AdapterSource, fetched: Fetched | None, disk: DiskCache,
                  target: LoraTargetShapes, max_rank: int, dtype: torch.dtype,
                  pin_memory: bool) -> LoadOutcome:
    """Read and check the adapter's files (releasing the disk hold of `fetched`), packed in
    the serving `dtype`, page-locked when `pin_memory`."""
    where = _where(name, source)
    started = time.monotonic()
    try:
        folder = fetched.folder if fetched is not None else Path(source.location)
        weights = load_peft_adapter(folder, target, max_rank, where, dtype, pin_memory)
        return LoadOutcome(weights, None, fetched, time.monotonic() - started)
    except AdapterError as refused:
        return LoadOutcome(None, refused, fetched, 0.0)
    except Exception as unexpected:
        return LoadOutcome(None, _unexpected(where, unexpected), fetched, 0.0)
    finally:
        if fetched is not None:
            disk.release(fetched.key)
