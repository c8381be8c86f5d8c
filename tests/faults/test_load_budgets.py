"""Loads cannot block each other: downloads and local loads have separate worker budgets,
every download has timeouts, and every load a deadline.

Reproduction: four S3 downloads from an endpoint that accepts and never answers held
all four load workers, and a local adapter registered after them waited minutes. The
endpoint here is a real TCP server that never replies (boto3 really connects and
waits); the local adapter is a real PEFT folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from transformers import LlamaConfig

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from tests.faults.hung_endpoint import HungEndpoint
from tests.unit.adapters.helpers import wait_state, wait_until

NUM_HUNG = 8
TARGET = LoraTargetShapes.from_hf_config(LlamaConfig(
    num_hidden_layers=2, vocab_size=64, hidden_size=576, intermediate_size=1536,
    num_attention_heads=9, num_key_value_heads=3))


@pytest.fixture
def hung(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungEndpoint]:
    with HungEndpoint() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        yield endpoint


@pytest.fixture
def make_manager(tmp_path: Path) -> Iterator[Callable[..., AdapterManager]]:
    managers: list[AdapterManager] = []

    def build(**settings) -> AdapterManager:
        settings = {"cache_dir": str(tmp_path / "cache"), "device_slots": 2,
                    "max_lora_rank": 8, "adapter_connect_timeout_s": 2.0,
                    "adapter_read_timeout_s": 30.0, **settings}
        managers.append(AdapterManager(EngineConfig(**settings), TARGET))
        return managers[-1]

    yield build
    for manager in managers:
        manager.close()


def _load_time(manager: AdapterManager, name: str, folder: Path) -> float:
    started = time.perf_counter()
    manager.register(name, str(folder))
    wait_state(manager, name, ["host"], timeout=60)
    return time.perf_counter() - started


def test_a_local_adapter_loads_in_its_usual_time_behind_hung_downloads(
        hung, make_manager, tmp_path):
    folder = write_random_adapter(tmp_path / "local", TARGET, rank=8, seed=3)
    manager = make_manager(load_workers=2, download_workers=2)
    alone = min(_load_time(manager, f"alone-{i}", folder) for i in range(3))
    for index in range(NUM_HUNG):
        manager.register(f"hung-{index}", f"s3://stalled-bucket/adapter-{index}")
    wait_until(lambda: hung.num_connections >= 2, timeout=20)  # downloads are waiting
    behind = _load_time(manager, "behind", folder)
    assert all(manager.get(f"hung-{i}").state == "downloading" for i in range(NUM_HUNG))
    print(f"local adapter load: alone {alone * 1000:.0f} ms, behind {NUM_HUNG} hung "
          f"downloads {behind * 1000:.0f} ms ({behind / alone:.2f}x)")
    assert behind < 2 * alone + 0.25  # (+ a margin for a busy test machine)


def test_a_load_past_its_deadline_fails_and_its_adapter_can_be_retried(hung, make_manager):
    manager = make_manager(download_workers=1, adapter_load_deadline_s=1.0)
    manager.register("stuck", "s3://stalled-bucket/adapter")
    manager.register("queued", "s3://stalled-bucket/other")  # behind it, never started
    wait_until(lambda: hung.num_connections >= 1, timeout=20)
    for name in ("stuck", "queued"):
        assert wait_state(manager, name, ["error"], timeout=10) == "error"
        info = manager.get(name)
        assert info.error_reason == "load_timeout" and "within 1 s" in info.error
    manager.register("stuck", "s3://stalled-bucket/adapter")  # a failed adapter is retried
    assert manager.get("stuck").state == "downloading"


def test_download_timeouts_are_settings():
    with pytest.raises(ValueError, match="adapter_read_timeout_s"):
        EngineConfig(adapter_read_timeout_s=0)
    with pytest.raises(ValueError, match="download_workers"):
        EngineConfig(download_workers=0)
