"""Source credentials of Adapters: read from the Secret that `credentialsSecretRef` names.

The operator hands them to the pods in each load (`PUT /v1/adapters/{name}`, where the pod
keeps them in memory for that adapter alone), so the adapters of one BaseModelDeployment
may come from repos and buckets with different keys. A Secret that is missing, or lacks a
key the source needs, holds the adapter back (nothing is pushed) and is reported with
reason `CredentialsNotFound`; every reconcile cycle reads the Secret again, so creating or
fixing it recovers on its own. A load that failed is retried once the Secret changes (its
resourceVersion differs from the one last pushed), so fixing a wrong key recovers too.

The Secret is read with `get` only, never watched, and only for adapters that need a load
or failed one: at most one read per Secret per cycle.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from loraplex.operator.actions import Load, Unload
from loraplex.operator.views import AdapterView

# Secret key → field of the admin API's `credentials` object.
SECRET_KEYS = {
    "HF_TOKEN": "hf_token",
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
}
REQUIRED_KEYS = {
    "hf://": ("HF_TOKEN",),
    "s3://": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
}

SecretGetter = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


class CredentialsNotFound(Exception):
    """The Secret is missing or lacks a key the source needs; the message says which."""


def required_keys(source: str) -> tuple[str, ...]:
    """Keys the source's scheme cannot do without (a path in the pod needs none)."""
    return next((keys for scheme, keys in REQUIRED_KEYS.items() if source.startswith(scheme)),
                ())


def secret_values(secret: Mapping[str, Any]) -> dict[str, str]:
    """The Secret's known keys, decoded; an empty or undecodable value counts as absent."""
    values = {}
    for key, encoded in (secret.get("data") or {}).items():
        if key not in SECRET_KEYS or not isinstance(encoded, str):
            continue
        try:
            value = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            continue
        if value:
            values[key] = value
    return values


def credentials_from_secret(secret: Mapping[str, Any] | None, name: str, namespace: str,
                            source: str) -> dict[str, str]:
    """The admin API's `credentials` object for `source`, or `CredentialsNotFound`."""
    if secret is None:
        raise CredentialsNotFound(f"Secret {name!r} (spec.credentialsSecretRef) not found in "
                                  f"namespace {namespace!r}")
    values = secret_values(secret)
    missing = [key for key in required_keys(source) if key not in values]
    if missing:
        scheme = source.partition("://")[0]
        raise CredentialsNotFound(f"Secret {name!r} (spec.credentialsSecretRef) has no "
                                  f"{' or '.join(missing)}, needed for {scheme}:// sources")
    return {SECRET_KEYS[key]: value for key, value in values.items()}


def secret_version(secret: Mapping[str, Any] | None) -> str | None:
    return ((secret or {}).get("metadata") or {}).get("resourceVersion")


class SecretCache:
    """Secrets read during one cycle: each at most once, however many adapters name it."""

    def __init__(self, get_secret: SecretGetter) -> None:
        self._get = get_secret
        self._read: dict[tuple[str, str], Mapping[str, Any] | None] = {}

    async def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        key = (namespace, name)
        if key not in self._read:
            self._read[key] = await self._get(namespace, name)
        return self._read[key]


async def attach_credentials(actions: Iterable[Load | Unload],
                             views: Mapping[str, AdapterView], secrets: SecretCache
                             ) -> tuple[list[Load | Unload], dict[str, str], dict[str, str]]:
    """Give each load of an adapter with a `credentialsSecretRef` its credentials.

    Returns the actions to run, the adapters held back (adapter → why: their loads are
    dropped) and, per adapter pushed with credentials, the Secret's resourceVersion.
    """
    kept: list[Load | Unload] = []
    withheld: dict[str, str] = {}
    versions: dict[str, str] = {}
    for action in actions:
        view = views.get(action.adapter)
        ref = view.spec.credentials_secret_ref if view and view.spec else None
        if not isinstance(action, Load) or ref is None:
            kept.append(action)
            continue
        secret = await secrets.get(view.namespace, ref.name)
        try:
            credentials = credentials_from_secret(secret, ref.name, view.namespace,
                                                  view.spec.source)
        except CredentialsNotFound as problem:
            withheld[action.adapter] = str(problem)
            continue
        kept.append(replace(action, credentials=credentials))
        if (version := secret_version(secret)) is not None:
            versions[action.adapter] = version
    return kept, withheld, versions


async def changed_secrets(failing: Iterable[str], views: Mapping[str, AdapterView],
                          pushed: Mapping[str, str], secrets: SecretCache) -> set[str]:
    """Failing adapters whose Secret changed since their credentials were last pushed."""
    changed = set()
    for name in failing:
        view = views.get(name)
        ref = view.spec.credentials_secret_ref if view and view.spec else None
        if ref is None:
            continue
        version = secret_version(await secrets.get(view.namespace, ref.name))
        if version is None or version != pushed.get(name):
            changed.add(name)
    return changed
