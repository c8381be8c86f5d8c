"""kopf settings for production: own finalizer and annotation prefixes, backoffs, events.

Chosen once, from day one: changing the progress or diff-base storage later would make
kopf re-run handlers on every object. Progress lives in annotations (it survives
operator restarts, and never in `status`, which is ours); only warnings of kopf's own
logs become Events, while the operator posts its own transition Events explicitly.
"""

from __future__ import annotations

import logging
import socket

import kopf

from loraplex.operator import naming
from loraplex.operator.config import OperatorConfig


def build_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=naming.ANNOTATION_PREFIX, v1=False)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.ANNOTATION_PREFIX, key="last-handled-configuration", v1=False)
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
