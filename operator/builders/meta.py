"""Metadata every child carries: its name, labels and an ownerReference to the BMD.

The ownerReference (controller, blockOwnerDeletion) lets Kubernetes garbage-collect the
children when the BaseModelDeployment goes, so the operator never deletes them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loraplex.operator import naming


@dataclass(frozen=True)
class Owner:
    """The BaseModelDeployment the children belong to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata", {})
        missing = [key for key in ("name", "namespace", "uid") if not meta.get(key)]
        if missing:
            raise ValueError(f"BaseModelDeployment metadata lacks {', '.join(missing)}")
        return cls(meta["name"], meta["namespace"], meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": naming.API_VERSION,
            "kind": naming.BMD_KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def child_metadata(owner: Owner, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": naming.common_labels(owner.name, component),
        "ownerReferences": [owner.reference()],
    }
