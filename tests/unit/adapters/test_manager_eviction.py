"""LRU per tier; leased and pinned adapters are never evicted; the grace period."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.synthetic import write_random_adapter
from tests.unit.adapters.helpers import wait_on_device, wait_state


def register_all(manager: AdapterManager, tmp_path: Path, target, names, rank=4,
                 **flags) -> None:
    for seed, name in enumerate(names):
        folder = tmp_path / name
        if not folder.exists():
            write_random_adapter(folder, target, rank=rank, seed=seed)
        manager.register(name, str(folder), **flags)
    for name in names:
        wait_state(manager, name, ["host"])


def on_device(manager: AdapterManager) -> set[str]:
    return {info.name for info in manager.list() if info.state == "device"}


def test_device_evicts_least_recently_used_idle_slot(tmp_path, smol_target,
                                                     make_manager) -> None:
    manager = make_manager(smol_target, device_slots=3)
    register_all(manager, tmp_path, smol_target, ["a", "b", "c", "d"])
    for name in ("a", "b", "c"):
        wait_on_device(manager, name)
    manager.want("a")  # b is now the least recently used
    wait_on_device(manager, "d")
    assert on_device(manager) == {"a", "c", "d"}
    assert manager.get("b").state == "host"
    assert manager.stats().evictions["device"] == 1


def test_leased_and_pinned_slots_are_never_evicted(tmp_path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target, device_slots=2)
    register_all(manager, tmp_path, smol_target, ["a", "b", "c"])
    register_all(manager, tmp_path, smol_target, ["p"], pinned=True)
    wait_on_device(manager, "a")
    lease = manager.acquire("a")
    wait_on_device(manager, "p")
    for _ in range(5):  # everything resident is leased or pinned: b must wait
        manager.poll()
        assert manager.want("b") is None
    assert on_device(manager) == {"a", "p"}
    manager.release(lease)
    wait_on_device(manager, "b")
    assert on_device(manager) == {"p", "b"}
    wait_on_device(manager, "c")  # b is idle now; p still stays
    assert on_device(manager) == {"p", "c"}


def test_a_slot_wanted_every_step_is_not_taken(tmp_path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target, device_slots=1)
    register_all(manager, tmp_path, smol_target, ["a", "b"])
    slot = wait_on_device(manager, "a")
    for _ in range(5):  # else b and a would take the slot from each other on every step
        manager.poll()
        assert manager.want("b") is None
        assert manager.want("a") == slot
    assert manager.stats().evictions["device"] == 0
    manager.poll()  # a step in which only b is wanted: a's slot is still protected
    assert manager.want("b") is None
    manager.poll()  # a was not wanted in the previous step: b takes its slot
    manager.want("b")
    assert manager.stats().evictions["device"] == 1
    wait_on_device(manager, "b")


def test_host_budget_evicts_lru_but_keeps_pinned_and_leased(tmp_path, smol_target,
                                                           make_manager) -> None:
    probe = write_random_adapter(tmp_path / "probe", smol_target, rank=4)
    manager = make_manager(smol_target, device_slots=1)
    manager.register("probe", str(probe))
    wait_state(manager, "probe", ["host"])
    size = manager.get("probe").size_bytes
    manager.unregister("probe")

    manager = make_manager(smol_target, device_slots=1, host_bytes=2 * size)
    register_all(manager, tmp_path, smol_target, ["pinned"], pinned=True)
    register_all(manager, tmp_path, smol_target, ["leased"])
    lease = manager.acquire("leased")
    register_all(manager, tmp_path, smol_target, ["x"])
    assert manager.get("pinned").state == "host" and manager.get("leased").state == "host"
    register_all(manager, tmp_path, smol_target, ["y"])
    assert manager.get("x").state == "disk"  # the only evictable one
    manager.release(lease)
    register_all(manager, tmp_path, smol_target, ["z"])
    assert {i.name: i.state for i in manager.list()} == {
        "pinned": "host", "leased": "disk", "x": "disk", "y": "disk", "z": "host"}
    assert manager.stats().resident["host"] == 2
    wait_on_device(manager, "x")  # evicted from RAM: reloaded from its folder on demand
    assert manager.get("x").state == "device"


@pytest.mark.parametrize("slots", [1, 3])
def test_every_wanted_adapter_gets_a_turn(tmp_path, smol_target, make_manager, slots) -> None:
    """An engine that wants adapters one after another gets each onto the device."""
    manager = make_manager(smol_target, device_slots=slots)
    names = [f"r{i}" for i in range(6)]
    register_all(manager, tmp_path, smol_target, names)
    for _ in range(2):
        for name in names:
            slot = wait_on_device(manager, name)
            lease = manager.acquire(name)
            assert lease.slot == slot and manager.pool.ranks_host[slot] == 4
            manager.release(lease)
