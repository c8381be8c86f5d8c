"""The adapter states and the admin API's answers: one spelling, read back as written."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraplex.contracts.adapters import (
    AdapterList,
    AdapterRemoval,
    AdapterState,
    AdapterStatus,
    Tier,
)


def test_states_are_the_documented_five_and_say_what_they_mean():
    assert [state.value for state in AdapterState] == [
        "downloading", "disk", "host", "device", "error"]
    assert {s for s in AdapterState if s.loaded} == {AdapterState.HOST, AdapterState.DEVICE}
    assert {s for s in AdapterState if s.failed} == {AdapterState.ERROR}
    assert [s.tier for s in AdapterState] == [None, Tier.DISK, Tier.HOST, Tier.DEVICE, None]
    assert f"{AdapterState.HOST}" == str(AdapterState.HOST) == "host"


def test_a_status_is_written_with_its_tier_and_read_back_equal():
    status = AdapterStatus(name="sql", state=AdapterState.DEVICE, source="/a", rank=8,
                           size_bytes=1000, digest="sha256:1", slot=3, in_use=2)
    document = status.model_dump(mode="json")
    assert document["state"] == "device" and document["tier"] == "device"
    assert AdapterStatus.model_validate(document) == status
    listing = AdapterList(adapters=[status])
    assert AdapterList.model_validate_json(listing.model_dump_json()).by_name() == {
        "sql": status}


def test_fields_a_newer_pod_adds_are_ignored_but_known_ones_are_checked():
    assert AdapterStatus.model_validate(
        {"name": "a", "state": "host", "future_field": [1]}).loaded
    for wrong in ({"name": "a", "state": "ready"}, {"name": "a", "state": "loading"},
                  {"name": "a"}, {"state": "host"}, {"name": "", "state": "host"},
                  {"name": "a", "state": "host", "rank": "eight"}):
        with pytest.raises(ValidationError):
            AdapterStatus.model_validate(wrong)


def test_removal_outcomes_are_removed_or_deferred():
    assert AdapterRemoval(name="a", outcome="deferred").model_dump() == {
        "name": "a", "deleted": True, "outcome": "deferred"}
    with pytest.raises(ValidationError):
        AdapterRemoval(name="a", outcome="maybe")
