"""One adapter load, as a load worker runs it: source → disk → parsed (pinned) weights.

Blocking work only, no shared state besides the disk cache: the manager submits this to
its worker pool and publishes the outcome under its own lock. Every failure becomes an
`AdapterError` in the outcome; nothing escapes the worker thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from loraplex.runtime.adapters.disk_cache import DiskCache, Fetched
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.source import AdapterSource, SourceCredentials
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.adapters.weights import AdapterWeights

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadOutcome:
    weights: AdapterWeights | None
    error: AdapterError | None
    fetched: Fetched | None  # None for local folders, which are read in place
    parse_seconds: float


def load_adapter(name: str, source: AdapterSource, credentials: SourceCredentials | None,
                 disk: DiskCache, target: LoraTargetShapes, max_rank: int,
                 pin_memory: bool) -> LoadOutcome:
    where = f"adapter {name!r} ({source.uri})"
    fetched = None
    try:
        if source.is_remote:
            fetched = disk.fetch(source, credentials)
            folder = fetched.folder
        else:
            folder = Path(source.location)
        started = time.monotonic()
        weights = load_peft_adapter(folder, target, max_rank, where)
        if pin_memory:
            weights = weights.pin_memory()
        return LoadOutcome(weights, None, fetched, time.monotonic() - started)
    except AdapterError as refused:
        return LoadOutcome(None, refused, fetched, 0.0)
    except Exception as unexpected:  # a bug or an OS error must not escape the worker
        log.exception("loading %s failed", where)
        error = AdapterError("load_failed", f"{where}: {type(unexpected).__name__}: "
                             f"{unexpected}")
        return LoadOutcome(None, error, fetched, 0.0)
    finally:
        if fetched is not None:
            disk.release(fetched.key)
