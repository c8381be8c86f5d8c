"""Settings of the router, declared once for flags, `LORAPLEX_*` variables and docs.

The router sits in front of one base model's pods. It learns the pods from a static
list, from the operator's placement table (a mounted file or the ConfigMap itself), or
both, and needs only addresses, timeouts and a routing policy: no model settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.contracts.placements import normalize_pod_url
from loraplex.settings import setting

POLICIES = ("affinity", "least-loaded", "random")


def split_urls(items: list[str]) -> list[str]:
    """`--pods a,b --pods c` and `LORAPLEX_PODS=a,b` both name pods a, b, c."""
    urls = []
    for item in items:
        urls.extend(part.strip() for part in item.split(",") if part.strip())
    return urls


@dataclass(slots=True)
class RouterConfig:
    host: str = setting("0.0.0.0", help="address to listen on")
    port: int = setting(8080, help="port to listen on")
    pods: list[str] = setting(factory=list, help="pod base URLs, comma-separated "
                              "(e.g. http://10.0.0.5:8080); added to the placement table's")
    placements_file: str = setting("", help="placement table JSON file (the operator's "
                                   "ConfigMap <name>-placements mounted), re-read on change")
    placements_configmap: str = setting("", help="watch this ConfigMap (key placements.json) "
                                        "through the Kubernetes API instead of a file")
    namespace: str = setting("", help="namespace of --placements-configmap (default: the "
                             "pod's own in a cluster, else the kubeconfig context's)")
    kube_api_url: str = setting("", help="Kubernetes API URL, without credentials (default: "
                                "the in-cluster service account, else KUBECONFIG or "
                                "~/.kube/config)")
    placements_poll_s: float = setting(1.0, help="seconds between checks of --placements-file")
    admin_token: str = setting("", help="bearer token for the pods' GET /v1/adapters")
    pod_poll_s: float = setting(2.0, help="seconds between polls of each pod's /ready, "
                                "/metrics and /v1/adapters")
    pod_poll_timeout_s: float = setting(5.0, help="seconds a poll may take; a pod whose "
                                        "polls time out 3 times in a row is marked down")
    policy: str = setting("affinity", help="affinity: pods holding the adapter first; "
                          "least-loaded: ignore adapters; random: uniform (for comparisons)",
                          choices=POLICIES)
    spill_threshold: int = setting(8, help="leave the adapter's pods for the least-loaded "
                                   "pod when they carry this many more requests than it")
    max_attempts: int = setting(3, help="pods tried per request when a connection fails "
                                "before the response starts")
    connect_timeout_s: float = setting(3.0, help="seconds to connect to a pod")
    read_timeout_s: float = setting(600.0, help="longest silence from a pod mid-request "
                                    "(a non-streamed generation is silent until it ends)")
    max_body_bytes: int = setting(16 << 20, help="largest request body accepted")
    shutdown_grace_s: float = setting(30.0, help="seconds SIGTERM waits for in-flight requests")
    log_level: str = setting("info", help="log level",
                             choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        positive = ("placements_poll_s", "pod_poll_s", "pod_poll_timeout_s", "max_attempts",
                    "connect_timeout_s", "read_timeout_s", "max_body_bytes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.spill_threshold < 0:
            raise ValueError(f"spill_threshold must not be negative, got {self.spill_threshold}")
        if self.placements_file and self.placements_configmap:
            raise ValueError("give --placements-file or --placements-configmap, not both")
        self.pods = [normalize_pod_url(url) for url in split_urls(self.pods)]
