"""The Kubernetes operator: CRD models, placement, builders and level-based reconcile.

Imported as `loraplex.operator`. It must never import torch: the operator image is small
and starts fast, and `tests/unit/operator` checks that importing its entry point leaves
`torch` out of `sys.modules`.
"""
