"""Settings of the operator process, declared once for flags, environment and docs."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.settings import setting


@dataclass(slots=True)
class OperatorConfig:
    namespace: list[str] = setting(
        factory=list, help="namespace to watch (repeatable); none: all namespaces")
    resync_interval_s: float = setting(
        10.0, help="seconds between full re-checks of a BaseModelDeployment's pods")
    loading_poll_s: float = setting(
        1.0, help="seconds between reads of the pods' adapter lists (a change starts a "
        "re-check: a pod that dropped an adapter is seen within this) and between "
        "re-checks while adapters are loading")
    children_resync_s: float = setting(
        60.0, help="seconds between re-applying the child objects (heals drift)")
    admin_timeout_s: float = setting(10.0, help="timeout of one call to a pod's admin API")
    pod_grace_s: float = setting(
        30.0, help="seconds a Ready pod may not answer its admin API (a container restart) "
        "before its adapters move elsewhere")
    admin_concurrency: int = setting(32, help="admin API calls in flight per BaseModelDeployment")
    default_adapter_bytes: int = setting(
        64 << 20, help="host bytes assumed for an adapter until a pod has read its size")
    autoscale_interval_s: float = setting(
        5.0, help="seconds between reads of the pods' load while some Adapter has "
        "spec.autoscale")
    rebalance_max_moves: int = setting(
        4, help="most placements a BaseModelDeployment moves at once to even out its pods "
        "(Spread; each loads on the new pod before it leaves the old); 0: never move")
    rebalance_threshold: int = setting(
        1, help="placements by which pods may differ before Spread moves any (at least 1)")
    unload_timeout_s: float = setting(
        120.0, help="how long deleting an Adapter waits for its pods to unload it")
    router_image: str = setting("", help="router image (default: the BMD's runtime image)")
    operator_namespace: str = setting(
        "", help="namespace of the operator's own pods, which the runtime pods' NetworkPolicy "
        "admits (the install manifests set it); empty: operator pods in any namespace")
    health_host: str = setting("0.0.0.0", help="address of the liveness endpoint")
    health_port: int = setting(
        8081, help="port of the liveness endpoint (GET /health; not the runtime's 8080); 0: off")
    standalone: bool = setting(True, help="run without peering (one replica, Recreate)")
    log_level: str = setting("info", help="log level",
                             choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        for name in ("resync_interval_s", "loading_poll_s", "children_resync_s",
                     "autoscale_interval_s",
                     "admin_timeout_s", "unload_timeout_s", "pod_grace_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.admin_concurrency <= 0:
            raise ValueError(f"admin_concurrency must be positive, got {self.admin_concurrency}")
        if self.rebalance_max_moves < 0:
            raise ValueError(f"rebalance_max_moves must not be negative, got "
                             f"{self.rebalance_max_moves}")
        if self.rebalance_threshold < 1:
            raise ValueError(f"rebalance_threshold must be at least 1, got "
                             f"{self.rebalance_threshold}")
        if self.default_adapter_bytes < 0:
            raise ValueError("default_adapter_bytes must not be negative")
        if not 0 <= self.health_port < 65536:
            raise ValueError(f"health_port must be in 0..65535, got {self.health_port}")
