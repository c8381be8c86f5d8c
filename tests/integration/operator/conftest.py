"""An emulated API server, the real operator (a subprocess) and real runtime pods.

Module-scoped: one scenario module drives one cluster from start to finish, so the
expensive parts (runtime servers, operator start) are paid once.
"""

from __future__ import annotations

import boto3
import pytest

from tests.helpers.s3 import KeyedS3Server
from tests.integration.operator.emulator import EmulatorThread
from tests.integration.operator.harness import RuntimePods, running_operator
from tests.integration.operator.kube import Kube

NAMESPACE = "loraplex-test"
BMD = "tiny"
S3_BUCKET = "keyed-adapters"
S3_KEYS = ("AKIDLORAPLEXOPERATOR", "operator-test-secret-key")
OPERATOR_FLAGS = (
    "--resync-interval-s", "2", "--loading-poll-s", "0.3", "--children-resync-s", "3",
    "--unload-timeout-s", "30", "--admin-timeout-s", "5", "--pod-grace-s", "60",
    "--log-level", "info",
)


@pytest.fixture(scope="module")
def emulator():
    thread = EmulatorThread().start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def kube(emulator):
    client = Kube(emulator.url, NAMESPACE)
    yield client
    client.close()


@pytest.fixture(scope="module")
def operator(emulator, tmp_path_factory):
    with running_operator(emulator.url, NAMESPACE, tmp_path_factory.mktemp("operator"),
                          *OPERATOR_FLAGS) as process:
        yield process


@pytest.fixture(scope="module")
def keyed_s3(tmp_path_factory):
    """An S3 bucket that serves only requests signed with S3_KEYS, holding one tiny-llama
    adapter at s3://S3_BUCKET/keyed (the pods reach it through AWS_ENDPOINT_URL)."""
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.models.shapes import shape_config

    key_id, secret_key = S3_KEYS
    with KeyedS3Server({key_id: secret_key}) as server:
        client = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                              aws_access_key_id=key_id, aws_secret_access_key=secret_key)
        client.create_bucket(Bucket=S3_BUCKET)
        target = LoraTargetShapes.from_hf_config(shape_config("tiny-llama"))
        folder = write_random_adapter(tmp_path_factory.mktemp("keyed") / "keyed", target,
                                      rank=4, seed=77)
        for path in folder.iterdir():
            client.upload_file(str(path), S3_BUCKET, f"keyed/{path.name}")
        yield server


@pytest.fixture(scope="module")
def pods(kube, keyed_s3, tmp_path_factory):
    env = {"AWS_ENDPOINT_URL": keyed_s3.url, "AWS_DEFAULT_REGION": "us-east-1",
           # the pods' own keys are not the bucket's: only an Adapter's Secret opens it
           "AWS_ACCESS_KEY_ID": "pod-environment-key", "AWS_SECRET_ACCESS_KEY": "pod-secret"}
    manager = RuntimePods(kube, BMD, tmp_path_factory.mktemp("pods"),
                          tmp_path_factory.mktemp("cache"), env)
    yield manager
    manager.stop_all()


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    """Synthetic PEFT adapters for tiny-llama, mixed ranks, and one of rank 128."""
    from loraplex.runtime.adapters.synthetic import write_random_adapter
    from loraplex.runtime.adapters.target import LoraTargetShapes
    from loraplex.runtime.models.shapes import shape_config

    target = LoraTargetShapes.from_hf_config(shape_config("tiny-llama"))
    root = tmp_path_factory.mktemp("adapters")
    folders = {f"lora-{i:02d}": write_random_adapter(root / f"lora-{i:02d}", target,
                                                     rank=(4, 8, 16)[i % 3], seed=i)
               for i in range(21)}
    folders["too-wide"] = write_random_adapter(root / "too-wide", target, rank=128, seed=99)
    return folders
