"""Loads run in parallel on worker threads, and nothing the engine calls waits for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.adapters.fifo import FifoGate
from tests.unit.adapters.helpers import wait_on_device, wait_state


@pytest.fixture
def gates() -> Iterator[list[FifoGate]]:
    made: list[FifoGate] = []
    yield made
    for gate in made:  # never leave a worker blocked on a pipe
        gate.close()


@pytest.mark.timeout(60)
def test_eight_loads_run_at_once(tmp_path: Path, smol_target, make_manager, gates) -> None:
    manager = make_manager(smol_target, load_workers=8)
    for i in range(8):
        gates.append(FifoGate(tmp_path / f"a{i}", smol_target, rank=4, seed=i))
        manager.register(f"a{i}", str(tmp_path / f"a{i}"))
    for gate in gates:  # all eight loaders are inside their read at the same time
        gate.wait_reader()
    for i in range(8):  # the engine's calls return while every load is blocked
        assert manager.want(f"a{i}") is None
        manager.poll()
        assert manager.get(f"a{i}").state == "downloading"
    for gate in gates:
        gate.release()
    for i in range(8):
        assert wait_state(manager, f"a{i}", ["host", "error"]) == "host"


@pytest.mark.timeout(60)
def test_a_stalled_source_does_not_hold_up_others(tmp_path: Path, smol_target, make_manager,
                                                  gates) -> None:
    from loraplex.runtime.adapters.synthetic import write_random_adapter

    manager = make_manager(smol_target, load_workers=2, device_slots=2)
    stalled = FifoGate(tmp_path / "stalled", smol_target, rank=4)
    gates.append(stalled)
    manager.register("stalled", str(tmp_path / "stalled"))
    stalled.wait_reader()
    for i in range(4):
        folder = write_random_adapter(tmp_path / f"ok{i}", smol_target, rank=4, seed=i)
        manager.register(f"ok{i}", str(folder))
    for i in range(4):
        assert wait_state(manager, f"ok{i}", ["host", "error"]) == "host"
    wait_on_device(manager, "ok0")
    lease = manager.acquire("ok0")
    assert manager.want("stalled") is None  # returns, although its load is stuck
    assert manager.get("stalled").state == "downloading"
    stalled.release()
    wait_on_device(manager, "stalled")
    manager.release(lease)


@pytest.mark.timeout(60)
def test_unregister_during_a_load_discards_it(tmp_path: Path, smol_target, make_manager,
                                              gates) -> None:
    from loraplex.runtime.adapters.synthetic import write_random_adapter

    manager = make_manager(smol_target, load_workers=1)
    gate = FifoGate(tmp_path / "gone", smol_target, rank=4)
    gates.append(gate)
    manager.register("gone", str(tmp_path / "gone"))
    gate.wait_reader()
    assert manager.unregister("gone") == "removed"
    # one worker: "after" loads only once the discarded load has finished
    manager.register("after", str(write_random_adapter(tmp_path / "after", smol_target, rank=4)))
    gate.release()
    wait_state(manager, "after", ["host"])
    assert [i.name for i in manager.list()] == ["after"]
    assert manager.stats().loads["host"] == 1 and manager.stats().resident["host"] == 1
