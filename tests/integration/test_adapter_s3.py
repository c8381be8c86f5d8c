"""Adapters from S3, against a real S3 API (moto's server on loopback via AWS_ENDPOINT_URL).

Covers the disk tier too: downloads land in hashed folders, are reused by other names and
by a restarted manager, and are evicted LRU within the byte budget unless pinned. And
per-adapter credentials, against a bucket that serves only requests signed with its key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.peft_format import load_peft_adapter
from loraplex.runtime.adapters.source import SourceCredentials
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from tests.helpers.s3 import KeyedS3Server
from tests.unit.adapters.helpers import wait_on_device, wait_state

TARGET = LoraTargetShapes(num_layers=2, hidden_size=576, num_heads=9, num_kv_heads=3,
                          head_dim=64, intermediate_size=1536)
BUCKET = "adapters"
LOCKED_BUCKET = "locked-adapters"
KEY_ID, SECRET_KEY = "AKIDLORAPLEXREADER", "reader-secret-key"


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """A moto S3 server holding adapters; yields the local twin folder of each prefix."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        root = tmp_path_factory.mktemp("s3-twins")
        twins = {}
        for seed, prefix in enumerate(["team/sql", "team/chat", "team/code"]):
            twins[prefix] = write_random_adapter(root / prefix, TARGET, rank=4 + 4 * seed,
                                                 seed=seed)
            (twins[prefix] / "README.md").write_text("not part of the adapter\n")
        pickled = write_random_adapter(root / "team/pickled", TARGET, rank=4)
        (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
        twins["team/pickled"] = pickled
        for prefix, folder in twins.items():
            for path in folder.iterdir():
                client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")
        yield twins
    server.stop()


@pytest.fixture(scope="module")
def locked_s3(tmp_path_factory) -> Iterator[tuple[KeyedS3Server, dict[str, Path]]]:
    """A bucket that answers only requests signed with KEY_ID/SECRET_KEY, with two adapters
    of equal size (so byte budgets can be set to hold exactly one)."""
    with KeyedS3Server({KEY_ID: SECRET_KEY}) as server:
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                              aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY)
        client.create_bucket(Bucket=LOCKED_BUCKET)
        root = tmp_path_factory.mktemp("locked-twins")
        twins = {prefix: write_random_adapter(root / prefix, TARGET, rank=4, seed=10 + seed)
                 for seed, prefix in enumerate(["keyed/one", "keyed/two"])}
        for prefix, folder in twins.items():
            for path in folder.iterdir():
                client.upload_file(str(path), LOCKED_BUCKET, f"{prefix}/{path.name}")
        yield server, twins


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[list[AdapterManager]]:
    made: list[AdapterManager] = []
    yield made
    for manager in made:
        manager.close()


def new_manager(managers: list, cache: Path, **settings) -> AdapterManager:
    settings.setdefault("max_lora_rank", 16)
    manager = AdapterManager(EngineConfig(cache_dir=str(cache), device_slots=2, **settings),
                             TARGET)
    managers.append(manager)
    return manager


@pytest.mark.timeout(120)
def test_s3_adapter_loads_and_is_cached(s3, managers, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    manager = new_manager(managers, cache)
    manager.register("sql", f"s3://{BUCKET}/team/sql/")
    assert wait_state(manager, "sql", ["host", "error"]) == "host", manager.get("sql").error
    local = load_peft_adapter(s3["team/sql"], TARGET, max_rank=16)
    assert manager.get("sql").digest == local.digest  # same bytes, same digest, any source
    assert manager.get("sql").source == f"s3://{BUCKET}/team/sql"
    wait_on_device(manager, "sql")

    manager.register("sql-again", f"s3://{BUCKET}/team/sql")  # same source, another name
    wait_state(manager, "sql-again", ["host"])
    stats = manager.stats()
    assert stats.loads["disk"] == 1 and stats.resident["disk"] == 1
    folders = [p for p in (cache / "adapters").iterdir()]
    assert len(folders) == 1 and "sql" not in folders[0].name
    assert sorted(p.name for p in folders[0].iterdir() if not p.name.startswith(".")) == [
        "adapter_config.json", "adapter_model.safetensors"]  # no README, nothing else

    restarted = new_manager(managers, cache)
    restarted.register("sql", f"s3://{BUCKET}/team/sql")
    wait_state(restarted, "sql", ["host"])
    assert restarted.stats().loads["disk"] == 0  # adopted from the earlier run


@pytest.mark.timeout(120)
def test_s3_refusals(s3, managers, tmp_path: Path) -> None:
    manager = new_manager(managers, tmp_path / "cache")
    manager.register("pickled", f"s3://{BUCKET}/team/pickled")
    manager.register("nothing", f"s3://{BUCKET}/team/absent")
    manager.register("no-bucket", "s3://no-such-bucket/x")
    manager.register("chat", f"s3://{BUCKET}/team/chat")
    expected = {"pickled": "pickle_weights", "nothing": "missing_file",
                "no-bucket": "download_failed"}
    for name, reason in expected.items():
        wait_state(manager, name, ["error"])
        assert manager.get(name).error_reason == reason, manager.get(name).error
    assert "convert to safetensors" in manager.get("pickled").error
    assert "NoSuchBucket" in manager.get("no-bucket").error
    assert wait_state(manager, "chat", ["host", "error"]) == "host"
    assert not list((tmp_path / "cache").rglob("*.bin"))  # pickles are never downloaded


@pytest.mark.timeout(120)
def test_disk_budget_evicts_lru_but_not_pinned(s3, managers, tmp_path: Path) -> None:
    sizes = {p: sum(f.stat().st_size for f in s3[p].iterdir() if f.suffix != ".md")
             for p in ("team/sql", "team/chat", "team/code")}
    cache = tmp_path / "cache"
    manager = new_manager(managers, cache, disk_bytes=sizes["team/code"] + sizes["team/chat"])
    manager.register("sql", f"s3://{BUCKET}/team/sql", pinned=True)
    wait_state(manager, "sql", ["host"])
    for name in ("chat", "code"):
        manager.register(name, f"s3://{BUCKET}/team/{name}")
        wait_state(manager, name, ["host"])
    stats = manager.stats()
    assert stats.loads["disk"] == 3 and stats.resident["disk"] == 2
    assert stats.resident_bytes["disk"] == sizes["team/sql"] + sizes["team/code"]
    assert manager.disk.evictions == 1
    assert len([p for p in (cache / "adapters").iterdir()]) == 2


@pytest.mark.timeout(120)
def test_credentials_given_at_registration_serve_every_fetch(
        s3, locked_s3, managers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, twins = locked_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)  # the environment's keys are "testing"
    source = f"s3://{LOCKED_BUCKET}/keyed/one"
    size = sum(f.stat().st_size for f in twins["keyed/one"].iterdir())
    weights = load_peft_adapter(twins["keyed/one"], TARGET, max_rank=16).size_bytes
    manager = new_manager(managers, tmp_path / "cache", disk_bytes=size * 3 // 2,
                          host_bytes=weights * 3 // 2)
    right = SourceCredentials(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET_KEY)
    wrong = SourceCredentials(aws_access_key_id=KEY_ID, aws_secret_access_key="not-it")

    manager.register("no-keys", source)
    manager.register("one", source, credentials=wrong)
    for name, code in (("no-keys", "InvalidAccessKeyId"), ("one", "SignatureDoesNotMatch")):
        wait_state(manager, name, ["error"])
        assert manager.get(name).error_reason == "download_failed"
        assert code in manager.get(name).error
    assert "not-it" not in manager.get("one").error

    manager.register("one", source, credentials=right)  # a failed adapter is retried
    assert wait_state(manager, "one", ["host", "error"]) == "host", manager.get("one").error
    manager.register("two", f"s3://{LOCKED_BUCKET}/keyed/two", credentials=right)
    wait_state(manager, "two", ["host"])
    assert manager.get("one").state == "disk"  # out of RAM, and out of the disk cache too:
    assert manager.disk.evictions == 1 and len(manager.disk) == 1
    wait_on_device(manager, "one")  # so this is a new download, with the kept credentials
    assert manager.stats().loads["disk"] == 3
