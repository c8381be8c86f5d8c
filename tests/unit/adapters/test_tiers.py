"""The LRU bookkeeping shared by the tiers, and the disk cache's restart behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplex.runtime.adapters.disk_cache import MARKER, DiskCache
from loraplex.runtime.adapters.lru import LruBudget
from loraplex.runtime.adapters.source import parse_source


def test_lru_evicts_oldest_evictable_until_within_budget() -> None:
    lru: LruBudget[str] = LruBudget(100)
    for key, size in [("a", 40), ("b", 30), ("c", 30)]:
        lru.add(key, size)
    lru.touch("a")  # order now b, c, a
    lru.add("d", 50)  # 150 used
    assert lru.victims(lambda key: key != "b") == ["c", "a"]  # b is protected
    assert lru.keys() == ["b", "d"] and lru.used_bytes == 80
    assert lru.victims(lambda key: True) == []  # within budget: nothing to do
    lru.add("b", 90)  # resize counts once
    assert lru.used_bytes == 140
    assert lru.victims(lambda key: False) == []  # everything protected: over budget, kept
    with pytest.raises(ValueError, match="must not be negative"):
        LruBudget(-1)


def fake_download(root: Path, uri: str, size: int, mtime: float | None = None) -> str:
    key = DiskCache.key(parse_source(uri))
    folder = root / key
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * size)
    (folder / MARKER).write_text(json.dumps({"uri": uri}))
    if mtime is not None:
        import os
        os.utime(folder / MARKER, (mtime, mtime))
    return key


def test_restart_adopts_complete_folders_and_deletes_leftovers(tmp_path: Path) -> None:
    old = fake_download(tmp_path, "s3://bucket/old", 60, mtime=1_000)
    new = fake_download(tmp_path, "s3://bucket/new", 60, mtime=2_000)
    (tmp_path / "incomplete").mkdir()
    (tmp_path / ".tmp-s3-abc-1234").mkdir()
    cache = DiskCache(tmp_path, budget_bytes=100)
    assert old not in cache and new in cache  # over budget: the older one went
    assert cache.used_bytes == 60 and cache.evictions == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [new]
