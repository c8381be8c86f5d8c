"""Request-named adapters: registered names, allowed dynamic sources, everything else refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loraplex.runtime.adapters.errors import AdapterError, AdapterNotFound
from loraplex.runtime.adapters.synthetic import write_random_adapter
from tests.unit.adapters.helpers import wait_on_device, wait_state


def test_registered_names_and_sources_resolve(tmp_path: Path, smol_target,
                                              make_manager) -> None:
    manager = make_manager(smol_target)
    folder = write_random_adapter(tmp_path / "sql", smol_target, rank=4)
    manager.register("sql", str(folder))
    assert manager.resolve("sql") == "sql"
    assert manager.resolve("sql", "hub") == "sql"  # LoRAX clients may send their default
    # the same source named by a request maps to the registration, even with dynamic off
    assert manager.resolve(str(folder), "local") == "sql"
    assert manager.resolve(f"file://{folder}") == "sql"
    with pytest.raises(AdapterNotFound, match="'other' is not registered"):
        manager.resolve("other")
    with pytest.raises(AdapterNotFound, match="not allowed"):
        manager.resolve(str(tmp_path / "elsewhere"), "local")
    with pytest.raises(AdapterNotFound, match="not registered"):
        manager.resolve("my-org/bot")  # dynamic off: not even guessed as a hub id
    with pytest.raises(AdapterError, match="must not be empty"):
        manager.resolve("")


def test_allowed_dynamic_local_adapter_loads(tmp_path: Path, smol_target, make_manager) -> None:
    allowed = tmp_path / "allowed"
    folder = write_random_adapter(allowed / "team" / "bot", smol_target, rank=4)
    manager = make_manager(smol_target, allow_dynamic_adapters=[f"file://{allowed}"])
    name = manager.resolve(str(folder), "local")
    assert name.startswith("dynamic-")
    assert manager.resolve(str(folder), "local") == name  # one registration per source
    info = manager.get(name)
    assert info.dynamic and info.source == str(folder) and not info.pinned
    wait_on_device(manager, name)


def test_dynamic_requests_cannot_escape_the_prefix(tmp_path: Path, smol_target,
                                                   make_manager) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    secret = write_random_adapter(tmp_path / "secret", smol_target, rank=4)
    os.symlink(secret, allowed / "link")
    manager = make_manager(smol_target, allow_dynamic_adapters=[str(allowed)])
    for adapter_id in (f"{allowed}/../secret", str(allowed / "link"), str(secret),
                       f"{allowed}-x/a"):
        with pytest.raises(AdapterNotFound, match="not allowed"):
            manager.resolve(adapter_id, "local")
    assert manager.list() == []


def test_allowed_hub_id_registers_under_its_own_name(tmp_path: Path, smol_target,
                                                     make_manager, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    manager = make_manager(smol_target, allow_dynamic_adapters=["hf://my-org/"])
    assert manager.resolve("my-org/bot") == "my-org/bot"  # LoRAX: an org/repo id is a hub id
    assert manager.get("my-org/bot").source == "hf://my-org/bot"
    wait_state(manager, "my-org/bot", ["error"])
    assert manager.get("my-org/bot").error_reason == "download_failed"
    with pytest.raises(AdapterNotFound, match="not allowed"):
        manager.resolve("other-org/bot", "hub")
