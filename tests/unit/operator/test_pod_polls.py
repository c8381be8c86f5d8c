"""What a poll of the pods compares: adapters, states, sources and errors, not traffic."""

from __future__ import annotations

from loraplex.contracts.adapters import AdapterStatus
from loraplex.operator.sync import PodObservation, holdings
from loraplex.operator.views import pod_view

POD = pod_view({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
                "status": {"phase": "Running", "podIP": "10.0.0.1"}})


def observed(*entries, answered=True):
    adapters = {entry.name: entry for entry in entries} if answered else None
    return {"p": PodObservation(POD, adapters, None if answered else "refused")}


def entry(name="a", state="host", in_use=0, slot=None, source="/x"):
    return AdapterStatus(name=name, state=state, source=source, in_use=in_use, slot=slot,
                         last_used=float(in_use))


def test_traffic_and_slots_change_nothing():
    assert holdings(observed(entry())) == holdings(observed(entry(in_use=3, slot=2)))


def test_a_dropped_reloaded_or_failed_adapter_is_a_change():
    before = holdings(observed(entry(), entry("b")))
    for after in (observed(entry()), observed(entry(), entry("b", state="downloading")),
                  observed(entry(), entry("b", state="error")),
                  observed(entry(), entry("b", source="/y")),
                  observed(answered=False)):
        assert holdings(after) != before
