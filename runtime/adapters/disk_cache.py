"""The disk tier: downloaded adapter folders, kept across restarts within a byte budget.

Each remote source gets one folder named from the hash of its canonical uri (never from a
user-supplied name). A download lands in a temporary folder and is renamed into place
only when complete, with a marker file, so a crash mid-download leaves nothing that looks
valid. Folders being read are held and never evicted; pinned sources neither. Evicted
folders are renamed aside under the lock and deleted afterwards, so a concurrent fetch of
the same source never sees a half-deleted folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loraplex.runtime.adapters.lru import LruBudget
from loraplex.runtime.adapters.source import AdapterSource, FetchLimits, SourceCredentials

MARKER = ".loraplex-source.json"


@dataclass(frozen=True, slots=True)
class Fetched:
    key: str
    folder: Path
    downloaded: bool  # False: it was already in the cache
    seconds: float


class DiskCache:
    def __init__(self, root: str | Path, budget_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lru: LruBudget[str] = LruBudget(budget_bytes)
        self._holds: Counter[str] = Counter()
        self._pinned: set[str] = set()
        self._key_locks: dict[str, threading.Lock] = {}
        self.evictions = 0
        self._scan()

    @staticmethod
    def key(source: AdapterSource) -> str:
        return f"{source.kind}-{hashlib.sha256(source.uri.encode()).hexdigest()[:32]}"

    @property
    def used_bytes(self) -> int:
        return self._lru.used_bytes

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: str) -> bool:
        return key in self._lru

    def fetch(self, source: AdapterSource, credentials: SourceCredentials | None,
              limits: FetchLimits | None = None) -> Fetched:
        """The source's folder, downloaded if needed; held until `release(key)`.

        Blocks (download time); call it from a load worker, never from the engine loop.
        """
        key = self.key(source)
        started = time.monotonic()
        with self._lock:
            self._holds[key] += 1
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        try:
            with key_lock:
                with self._lock:
                    cached = key in self._lru
                    if cached:
                        self._lru.touch(key)
                if cached:
                    (self.root / key / MARKER).touch()  # LRU order survives restarts
                else:
                    self._download(source, credentials, key, limits)
        except BaseException:
            self.release(key)
            raise
        return Fetched(key, self.root / key, not cached, time.monotonic() - started)

    def release(self, key: str) -> None:
        with self._lock:
            self._holds[key] -= 1
            if self._holds[key] <= 0:
                del self._holds[key]
        self._evict()

    def set_pinned(self, key: str, pinned: bool) -> None:
        with self._lock:
            if pinned:
                self._pinned.add(key)
            else:
                self._pinned.discard(key)
        self._evict()

    def _download(self, source: AdapterSource, credentials: SourceCredentials | None,
                  key: str, limits: FetchLimits | None) -> None:
        staging = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            source.fetch(staging, credentials, limits)
            size = sum(p.stat().st_size for p in staging.iterdir() if p.is_file())
            marker = {"uri": source.uri, "size_bytes": size, "fetched_at": time.time()}
            (staging / MARKER).write_text(json.dumps(marker))
            final = self.root / key
            if final.exists():  # left incomplete by an earlier process
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self._lock:
            self._lru.add(key, size)
        self._evict()

    def _evict(self) -> None:
        with self._lock:
            victims = self._lru.victims(
                lambda key: key not in self._holds and key not in self._pinned)
            trash = []
            for key in victims:
                aside = self.root / f".trash-{key}-{uuid.uuid4().hex[:8]}"
                (self.root / key).rename(aside)
                trash.append(aside)
            self.evictions += len(victims)
        for folder in trash:
            shutil.rmtree(folder, ignore_errors=True)

    def _scan(self) -> None:
        """Adopt complete folders of an earlier run (oldest first); delete leftovers."""
        found = []
        for folder in self.root.iterdir():
            marker = folder / MARKER
            if folder.name.startswith((".tmp-", ".trash-")) or (
                    folder.is_dir() and not marker.is_file()):
                shutil.rmtree(folder, ignore_errors=True)
            elif folder.is_dir():
                size = sum(p.stat().st_size for p in folder.iterdir()
                           if p.is_file() and p.name != MARKER)
                found.append((marker.stat().st_mtime, folder.name, size))
        for _, key, size in sorted(found):
            self._lru.add(key, size)
        self._evict()
