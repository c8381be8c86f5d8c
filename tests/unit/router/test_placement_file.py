"""The placement file: applied when it appears or changes, last good table kept."""

from __future__ import annotations

from loraplex.contracts.placements import build_table
from loraplex.router.metrics import RouterMetrics
from loraplex.router.placement_file import PlacementFile

POD = "http://10.0.0.5:8080"


def reloads(metrics: RouterMetrics, result: str) -> float:
    return metrics.registry.get_sample_value("loraplex_router_placement_reloads_total",
                                             {"result": result}) or 0.0


def test_a_missing_file_is_reported_once_then_read_when_it_appears(tmp_path):
    path = tmp_path / "placements.json"
    tables, metrics = [], RouterMetrics()
    watcher = PlacementFile(str(path), tables.append, metrics, interval_s=1)
    assert not watcher.check() and not watcher.check()
    assert reloads(metrics, "error") == 1
    path.write_text(build_table([POD], {"a": [POD]}, generation=1).to_json())
    assert watcher.check()
    assert not watcher.check()  # unchanged: not read again
    assert [table.generation for table in tables] == [1]


def test_an_invalid_rewrite_keeps_the_last_table(tmp_path):
    path = tmp_path / "placements.json"
    path.write_text(build_table([POD], {}, generation=1).to_json())
    tables, metrics = [], RouterMetrics()
    watcher = PlacementFile(str(path), tables.append, metrics, interval_s=1)
    assert watcher.check()
    path.write_text('{"pods": ["not a url"], "adapters": {}}')
    assert not watcher.check()
    path.write_text(build_table([POD], {}, generation=2).to_json())
    assert watcher.check()
    assert [table.generation for table in tables] == [1, 2]
    assert (reloads(metrics, "ok"), reloads(metrics, "error")) == (2, 1)
