"""An emulated API server, the real operator (a subprocess) and real runtime pods.

Module-scoped: one scenario module drives one cluster from start to finish, so the
expensive parts (runtime servers, operator start) are paid once.
"""

from __future__ import annotations

import pytest

from tests.integration.operator.emulator import EmulatorThread
from tests.integration.operator.harness import OperatorProcess, RuntimePods, write_kubeconfig
from tests.integration.operator.kube import Kube

NAMESPACE = "loraplex-test"
BMD = "tiny"
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
    folder = tmp_path_factory.mktemp("operator")
    kubeconfig = write_kubeconfig(folder / "kubeconfig", emulator.url, NAMESPACE)
    process = OperatorProcess(kubeconfig, NAMESPACE, folder, *OPERATOR_FLAGS)
    process.start()
    yield process
    process.stop()
    print(process.logs()[-20000:])  # shown by pytest when a test of the module failed


@pytest.fixture(scope="module")
def pods(kube, tmp_path_factory):
    manager = RuntimePods(kube, BMD, tmp_path_factory.mktemp("pods"),
                          tmp_path_factory.mktemp("cache"))
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
