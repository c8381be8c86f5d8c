"""bench.operator at a small size: its stub pods and appliers, each in processes of their
own, really drive the operator to Ready, and the calls it reports are the calls made."""

from __future__ import annotations

import argparse

from bench import operator as bench_operator


def test_bench_operator_readies_every_adapter_and_counts_its_calls(tmp_path):
    args = argparse.Namespace(adapters=24, pods=3, replicas=1, pod_kind="stub", resync=1.0,
                              timeout=60.0)
    result = bench_operator.run(args)  # raises TimeoutError unless all 24 become Ready
    assert result["admin_calls"]["PUT"] == 24  # one load each, confirmed at once
    calls = result["k8s_calls_by_kind"]
    assert calls["update adapters/status"] >= 24
    assert calls["update adapters"] == 24  # the finalizer, once per Adapter
    assert result["all_ready_s"] >= result["apply_s"] > 0
    assert result["operator_cpu_s"] > 0 and result["stub_pods_cpu_s"] > 0
