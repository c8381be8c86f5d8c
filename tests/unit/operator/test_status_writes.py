"""The status writer trusts its own last write while kopf's index still shows the older
status, and the index again once it shows anything else."""

from __future__ import annotations

from loraplex.operator.status_writes import AdapterStatusWriter
from loraplex.operator.views import adapter_view

LOADING, READY, EDITED = ({"phase": phase} for phase in ("Loading", "Ready", "Failed"))


def view(status, name="a"):
    return adapter_view({"metadata": {"name": name, "namespace": "ns", "generation": 1},
                         "spec": {"baseModel": "b", "source": "/x"}, "status": status})


def writer_that_wrote(shown, wrote):
    writer = AdapterStatusWriter(cluster=None, events=lambda *event: None)
    writer.written["a"] = (shown, wrote)
    return writer


def test_an_index_not_yet_showing_the_write_reads_as_the_write():
    writer = writer_that_wrote(LOADING, READY)
    assert writer.latest(view(LOADING)).status == READY
    assert writer.latest(view(LOADING)).status == READY  # still lagging: still the write


def test_once_the_index_shows_something_else_it_wins():
    for shown in (READY, EDITED):
        writer = writer_that_wrote(LOADING, READY)
        assert writer.latest(view(shown)).status == shown
        assert "a" not in writer.written
        assert writer.latest(view(LOADING)).status == LOADING  # the record is gone


def test_records_of_adapters_that_are_gone_are_dropped():
    writer = writer_that_wrote(LOADING, READY)
    writer.forget({"b"})
    assert writer.written == {}
    assert writer.latest(view(LOADING)).status == LOADING
