"""AdapterManager: register, load in the background, report, refuse, re-register, remove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplex.runtime.adapters.errors import AdapterError, AdapterNotFound
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.synthetic import write_random_adapter
from tests.unit.adapters.helpers import wait_on_device, wait_state


def test_register_loads_and_reports(tmp_path: Path, smol_target, make_manager) -> None:
    folder = write_random_adapter(tmp_path / "sql", smol_target, rank=8, seed=1,
                                  rank_pattern={"v_proj": 4})
    manager = make_manager(smol_target)
    info = manager.register("sql", str(folder))
    assert info.state == "downloading" and info.source == str(folder)
    assert wait_state(manager, "sql", ["host"]) == "host"
    expected = load_peft_adapter(folder, smol_target, max_rank=16)
    info = manager.get("sql")
    assert (info.rank, info.size_bytes, info.digest) == (8, expected.size_bytes, expected.digest)
    assert info.digest.startswith("sha256:") and info.error is None and info.slot is None

    slot = wait_on_device(manager, "sql")
    info = manager.get("sql")
    assert info.state == "device" and info.slot == slot and info.last_used is not None
    assert manager.pool.ranks_host[slot] == 8
    stats = manager.stats()
    assert stats.loads["host"] == 1 and stats.loads["device"] == 1
    assert stats.resident["device"] == 1 and stats.resident["host"] == 1
    assert [a.name for a in manager.list()] == ["sql"]


def refused_folder(tmp_path: Path, target, case: str) -> Path:
    folder = write_random_adapter(tmp_path / case, target, rank=4, seed=2)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if case == "pickle":
        (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    elif case == "dora":
        config["use_dora"] = True
    elif case == "rank":
        config["rank_pattern"] = {"q_proj": 64}
    elif case == "lm_head":
        config["target_modules"] = ["lm_head"]
    config_path.write_text(json.dumps(config))
    return folder


REFUSED = {"pickle": "pickle_weights", "dora": "dora", "rank": "rank_too_large",
           "lm_head": "unsupported_module", "missing": "missing_file"}


def test_refused_adapters_fail_alone(tmp_path: Path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target, device_slots=2)
    good = write_random_adapter(tmp_path / "good", smol_target, rank=4)
    manager.register("good", str(good))
    for case in REFUSED:
        folder = tmp_path / case if case == "missing" else refused_folder(tmp_path, smol_target,
                                                                          case)
        manager.register(case, str(folder))
    for case, reason in REFUSED.items():
        assert wait_state(manager, case, ["error"]) == "error"
        info = manager.get(case)
        assert info.error_reason == reason and case in info.error
        assert manager.failed(case) == info.error
        with pytest.raises(AdapterError) as refused:
            manager.want(case)
        assert refused.value.reason == reason
        with pytest.raises(AdapterError):
            manager.acquire(case)
    assert manager.failed("good") is None
    slot = wait_on_device(manager, "good")
    lease = manager.acquire("good")
    assert lease.slot == slot
    manager.release(lease)
    assert manager.stats().failures == len(REFUSED)


def test_bad_registrations_change_nothing(tmp_path: Path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target)
    folder = write_random_adapter(tmp_path / "a", smol_target, rank=4)
    for kwargs, reason in [(dict(name="../a", source=str(folder)), "bad_name"),
                           (dict(name="a", source="ftp://x/y"), "bad_source"),
                           (dict(name="a", source=str(folder), preload="gpu"), "bad_preload")]:
        with pytest.raises(AdapterError) as refused:
            manager.register(**kwargs)
        assert refused.value.reason == reason
    assert manager.list() == []
    with pytest.raises(AdapterNotFound):
        manager.want("a")
    with pytest.raises(AdapterNotFound, match="'nope' is not registered"):
        manager.unregister("nope")


def test_same_source_is_not_reloaded_and_a_new_one_is(tmp_path: Path, smol_target,
                                                      make_manager) -> None:
    manager = make_manager(smol_target)
    first = write_random_adapter(tmp_path / "v1", smol_target, rank=4, seed=1)
    second = write_random_adapter(tmp_path / "v2", smol_target, rank=8, seed=2)
    manager.register("bot", str(first))
    wait_on_device(manager, "bot")
    digest = manager.get("bot").digest
    lease = manager.acquire("bot")
    info = manager.register("bot", f"file://{first}", pinned=True)  # same source, new flags
    assert info.state == "device" and info.pinned and info.digest == digest
    assert manager.stats().loads["host"] == 1

    manager.register("bot", str(second))  # new source: a new load while the old one runs
    wait_state(manager, "bot", ["host"])
    assert manager.get("bot").digest != digest and manager.get("bot").rank == 8
    new_slot = wait_on_device(manager, "bot")
    assert new_slot != lease.slot  # the running sequences keep the old weights
    assert manager.stats().resident["device"] == 2
    manager.release(lease)  # the old registration goes with its last lease
    assert manager.stats().resident["device"] == 1
    assert manager.want("bot") == new_slot


def test_failed_adapter_retries_on_register(tmp_path: Path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target)
    folder = tmp_path / "later"
    manager.register("later", str(folder))
    wait_state(manager, "later", ["error"])
    write_random_adapter(folder, smol_target, rank=4)
    manager.register("later", str(folder))
    assert wait_state(manager, "later", ["host", "error"]) == "host"


def test_unregister_waits_for_leases(tmp_path: Path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target, device_slots=1)
    for name in ("a", "b"):
        manager.register(name, str(write_random_adapter(tmp_path / name, smol_target, rank=4)))
    wait_on_device(manager, "a")
    lease = manager.acquire("a")
    assert manager.unregister("a") == "deferred"
    with pytest.raises(AdapterNotFound):
        manager.want("a")
    assert [i.name for i in manager.list()] == ["b"]
    wait_state(manager, "b", ["host"])
    for _ in range(3):  # the only slot is still in use
        manager.poll()
        assert manager.want("b") is None
    manager.release(lease)
    assert wait_on_device(manager, "b") == lease.slot
    with pytest.raises(ValueError, match="already released"):
        manager.release(lease)
    assert manager.unregister("b") == "removed"
    assert manager.list() == []
    assert manager.stats().resident == {"disk": 0, "host": 0, "device": 0}


def test_device_preload_needs_no_request(tmp_path: Path, smol_target, make_manager) -> None:
    manager = make_manager(smol_target)
    folder = write_random_adapter(tmp_path / "hot", smol_target, rank=4)
    manager.register("hot", str(folder), preload="device")

    def settled() -> str:
        manager.poll()
        return manager.get("hot").state

    from tests.unit.adapters.helpers import wait_until
    wait_until(lambda: settled() == "device", what="device preload")
    assert manager.get("hot").slot is not None
