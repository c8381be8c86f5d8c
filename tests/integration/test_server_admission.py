"""The admission gate: bounded in-flight sequences, 429 beyond, 503 while draining."""

from __future__ import annotations

import asyncio

import pytest

from loraplex.runtime.server.admission import AdmissionGate
from loraplex.runtime.server.errors import NotReady, Overloaded, ValidationFailed


def test_admits_up_to_capacity_then_refuses_with_retry_after() -> None:
    gate = AdmissionGate(max_running=1, max_waiting=2)
    leases = [gate.admit() for _ in range(3)]
    with pytest.raises(Overloaded) as refused:
        gate.admit()
    assert refused.value.status_code == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert gate.in_flight == 3
    leases[0].release()
    gate.admit().release()
    assert gate.in_flight == 2


def test_multi_sequence_requests_count_once_per_sequence() -> None:
    gate = AdmissionGate(max_running=2, max_waiting=2)
    with gate.admit(3):
        with pytest.raises(Overloaded):
            gate.admit(2)
        gate.admit(1).release()
    assert gate.in_flight == 0


def test_request_larger_than_capacity_is_a_validation_error_not_overload() -> None:
    gate = AdmissionGate(max_running=1, max_waiting=0)
    with pytest.raises(ValidationFailed, match="never be served"):
        gate.admit(2)
    assert gate.in_flight == 0


def test_release_is_idempotent() -> None:
    gate = AdmissionGate(max_running=1, max_waiting=0)
    lease = gate.admit()
    lease.release()
    lease.release()
    assert gate.in_flight == 0
    gate.admit()
    assert gate.in_flight == 1


def test_draining_refuses_new_work_and_waits_for_in_flight() -> None:
    async def scenario() -> tuple[bool, bool]:
        gate = AdmissionGate(max_running=4, max_waiting=0)
        lease = gate.admit()
        gate.start_draining()
        with pytest.raises(NotReady):
            gate.admit()
        timed_out = await gate.wait_idle(0.05)
        asyncio.get_running_loop().call_later(0.05, lease.release)
        became_idle = await gate.wait_idle(5)
        return timed_out, became_idle

    timed_out, became_idle = asyncio.run(scenario())
    assert timed_out is False
    assert became_idle is True


def test_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="max_running"):
        AdmissionGate(max_running=0, max_waiting=1)
