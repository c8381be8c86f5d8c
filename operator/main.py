"""`loraplex operator`: run the kopf operator against the current kubeconfig or in-cluster.

kopf logs in with the kubernetes client (KUBECONFIG / ~/.kube/config, or the pod's
service account); the operator's own writes use lightkube, which reads the same config.
Deploy it as one replica with `strategy: Recreate`: kopf peering is not leader election.
"""

from __future__ import annotations

import logging

import kopf

from loraplex.operator.config import OperatorConfig
from loraplex.operator.handlers import build_registry
from loraplex.operator.kopf_settings import build_settings
from loraplex.operator.state import OperatorState


def run(config: OperatorConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config.log_level != "debug":  # one line per handled event or HTTP call drowns the rest
        for noisy in ("kopf.objects", "httpx", "httpx2"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    liveness = (f"http://{config.health_host}:{config.health_port}/health"
                if config.health_port else None)
    kopf.run(
        registry=build_registry(config),
        settings=build_settings(config),
        standalone=config.standalone,
        clusterwide=not config.namespace,
        namespaces=config.namespace,
        liveness_endpoint=liveness,
        memo=kopf.Memo(state=OperatorState(config)),
    )
    return 0
