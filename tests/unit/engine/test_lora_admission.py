"""Admission by adapter: leases, loads that never block, fair rotation of one slot.

A real `AdapterManager` (2-layer SmolLM-shaped target, one device slot, no grace period)
and a clock the test moves by hand, so the time slice is exact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transformers import LlamaConfig

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.manager import AdapterManager
from loraplex.runtime.adapters.synthetic import write_random_adapter
from loraplex.runtime.adapters.target import LoraTargetShapes
from loraplex.runtime.config import EngineConfig
from loraplex.runtime.engine.adapter_admission import AdapterAdmission
from loraplex.runtime.engine.request import GenerationRequest
from loraplex.runtime.engine.sequence import Sequence

pytestmark = pytest.mark.timeout(60)

TARGET = LoraTargetShapes.from_hf_config(LlamaConfig(
    num_hidden_layers=2, vocab_size=64, hidden_size=64, intermediate_size=128,
    num_attention_heads=4, num_key_value_heads=2))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager(tmp_path: Path):
    config = EngineConfig(cache_dir=str(tmp_path / "cache"), device_slots=1, max_lora_rank=8)
    manager = AdapterManager(config, TARGET)
    for index, name in enumerate(("a", "b")):
        folder = write_random_adapter(tmp_path / name, TARGET, 4, seed=index)
        manager.register(name, str(folder))
    yield manager
    manager.close()


def seq(adapter: str | None) -> Sequence:
    return Sequence(GenerationRequest("r", [1, 2], adapter=adapter), detokenizer=None)


def admit_soon(admission: AdapterAdmission, item: Sequence, tries: int = 200) -> bool:
    """Admit within a few steps (the copy into the slot runs on the manager's thread)."""
    for _ in range(tries):
        admission.begin_step()
        if admission.admit(item):
            return True
        time.sleep(0.01)
    return False


def test_base_requests_always_pass_and_leases_pin_the_slot(manager):
    admission = AdapterAdmission(manager, time_slice_s=10.0)
    admission.begin_step()
    assert admission.admit(seq(None))
    first = seq("a")
    assert admit_soon(admission, first)
    assert first.lora_slot == 0 and manager.get("a").in_use == 1
    blocked = seq("b")  # the only slot is leased: b waits, and does not evict a
    for _ in range(5):
        admission.begin_step()
        assert not admission.admit(blocked)
    assert manager.get("a").slot == 0
    admission.release(first)
    assert first.adapter_lease is None and first.lora_slot == -1
    assert manager.get("a").in_use == 0
    assert admit_soon(admission, blocked)


def test_turn_ends_after_the_time_slice_when_another_adapter_starves(manager):
    clock = Clock()
    admission = AdapterAdmission(manager, time_slice_s=2.0, clock=clock)
    running_a = seq("a")
    assert admit_soon(admission, running_a)
    starving_b = seq("b")
    for _ in range(50):  # b loads into host RAM, then waits for the slot
        admission.begin_step()
        assert not admission.admit(starving_b)
        if manager.get("b").state == "host":
            break
        time.sleep(0.01)
    admission.begin_step()
    assert not admission.admit(starving_b)
    admission.begin_step()
    second_a = seq("a")
    assert admission.admit(second_a)  # a's turn is young: more a requests still join
    clock.now += 3.0  # a's turn is over and b is starving: new a requests wait
    admission.begin_step()
    assert not admission.admit(starving_b)
    late_a = seq("a")
    assert not admission.admit(late_a)
    admission.release(running_a)  # a's running requests finish
    admission.release(second_a)
    assert admit_soon(admission, starving_b)  # the slot went to b
    assert manager.get("b").slot == 0
    admission.begin_step()
    assert not admission.admit(late_a)  # a now waits its turn behind b


def test_a_failed_adapter_raises_for_its_requests_only(manager, tmp_path):
    bad = write_random_adapter(tmp_path / "bad", TARGET, 4, seed=9)
    (bad / "adapter_config.json").write_text("{not json")
    manager.register("bad", str(bad))
    admission = AdapterAdmission(manager)
    for _ in range(200):
        admission.begin_step()
        if manager.failed("bad"):
            break
        time.sleep(0.01)
    with pytest.raises(AdapterError):
        admission.admit(seq("bad"))
    assert admit_soon(admission, seq("a"))
