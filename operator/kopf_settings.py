"""kopf settings for production: own finalizer and annotation prefixes, backoffs, events.

Progress lives in annotations (it survives operator restarts, and never in `status`,
which is ours); only warnings of kopf's own logs become Events, while the operator posts
its own transition Events explicitly. No diff base is stored: no handler here compares
an object's old and new spec (reconcile is level-based, deletion is told by the
deletion timestamp), and kopf would otherwise write an annotation on every Adapter,
a patch and a watch event each. Adding an on.create/on.update/on.resume handler would
need one (and would run once on every existing object).
"""

from __future__ import annotations

import logging
import socket

import kopf

from loraplex.operator import naming
from loraplex.operator.config import OperatorConfig


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps no last-handled state: every event reads as new to kopf, which runs no
    handler for it (there are none of the kinds that compare states)."""

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=naming.ANNOTATION_PREFIX, v1=False)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.enabled = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = naming.MANAGED_BY
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = "loraplex-"
    settings.execution.default_backoff = 10
    settings.networking.error_backoffs = (1, 2, 5, 10, 20, 30)
    settings.networking.enforce_retry_after = True
    settings.watching.server_timeout = 300
    settings.watching.connect_timeout = 10
    settings.peering.standalone = config.standalone
    settings.peering.mandatory = not config.standalone
    settings.scanning.disabled = True  # our CRDs are installed with the operator
    # Only the runtime pods of some BaseModelDeployment are watched, filtered server-side.
    settings.watching.label_selectors["v1", "pods"] = naming.LABEL_BASE_MODEL
    return settings
