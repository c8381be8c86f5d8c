"""Prometheus series a pod exports and the router reads to pick the least-loaded pod.

They are vLLM's names, which the Gateway API Inference Extension's endpoint picker scrapes
too, so they must not be renamed on one side only.
"""

from __future__ import annotations

REQUESTS_RUNNING = "vllm:num_requests_running"
REQUESTS_WAITING = "vllm:num_requests_waiting"
