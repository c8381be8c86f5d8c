"""`loraplex operator` refuses a liveness port it cannot listen on, naming the flag."""

from __future__ import annotations

import socket
import subprocess
import sys

from loraplex.operator.config import OperatorConfig
from loraplex.operator.main import liveness_port_problem


def test_the_liveness_port_is_not_the_runtime_servers():
    assert OperatorConfig().health_port == 8081


def test_a_taken_liveness_port_exits_naming_the_flag_before_talking_to_a_cluster():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        problem = liveness_port_problem("127.0.0.1", port)
        assert problem is not None and "--health-port" in problem and str(port) in problem
        result = subprocess.run(
            [sys.executable, "-m", "loraplex.cli", "operator", "--health-host", "127.0.0.1",
             "--health-port", str(port)], capture_output=True, text=True, timeout=60,
            env={"KUBECONFIG": "/nonexistent", "PATH": ""})
    assert result.returncode == 2
    assert "--health-port" in result.stderr and "Traceback" not in result.stderr
    assert liveness_port_problem("127.0.0.1", port) is None  # free again
