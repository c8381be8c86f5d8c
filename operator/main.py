"""`loraplex operator`: run the kopf operator against the current kubeconfig or in-cluster.

kopf logs in with the kubernetes client (KUBECONFIG / ~/.kube/config, or the pod's
service account); the operator's own writes use lightkube, which reads the same config.
Deploy it as one replica with `strategy: Recreate`: kopf peering is not leader election.
"""

from __future__ import annotations

import logging
import socket
import sys

import kopf

from loraplex.operator.config import OperatorConfig
from loraplex.operator.handlers import build_registry
from loraplex.operator.kopf_settings import build_settings
from loraplex.operator.state import OperatorState


def liveness_port_problem(host: str, port: int) -> str | None:
    """Why the liveness endpoint could not listen on host:port, naming the flag to change
    (kopf would fail later, deep in a traceback); None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            return (f"loraplex operator: the liveness endpoint cannot listen on {host}:{port} "
                    f"({error.strerror or error}); choose another port with --health-port "
                    f"(or LORAPLEX_HEALTH_PORT; 0 turns it off) or another address with "
                    f"--health-host")
    return None


def run(config: OperatorConfig) -> int:
    if config.health_port and (problem := liveness_port_problem(config.health_host,
                                                                 config.health_port)):
        print(problem, file=sys.stderr)
        return 2
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
