"""Which adapter sources a request may name, and how LoRAX-style requests name them.

A request names an adapter by a registered name, or by a source: LoRAX's
`adapter_id` + `adapter_source` (`hub`, `s3`, `local`) or a source uri as the id. Loading
from a source a client chose is a security decision (disk, bandwidth, local files), so it
is off unless the server was started with `--allow-dynamic-adapters PREFIX`, and a source
must lie inside one prefix: on a path boundary, after `..` is resolved, and for local
folders after symlinks are resolved, so `/allowed/../etc` or a symlink out of the allowed
folder is refused.
"""

from __future__ import annotations

import hashlib
import os

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.source import (
    FILE_SCHEME,
    HF_SCHEME,
    S3_SCHEME,
    AdapterSource,
    parse_source,
)

REQUEST_SOURCE_SCHEMES = {"hub": HF_SCHEME, "s3": S3_SCHEME}


def request_source(adapter_id: str, adapter_source: str | None) -> AdapterSource | None:
    """The source a request names, or None when `adapter_id` can only be a registered name."""
    if not adapter_source:
        if "://" in adapter_id or adapter_id.startswith("/"):
            return parse_source(adapter_id)
        return None
    if adapter_source == "local":
        if not (adapter_id.startswith("/") or adapter_id.startswith(FILE_SCHEME)):
            raise AdapterError("bad_source", f"adapter_source 'local' needs an absolute path, "
                               f"got {adapter_id!r}")
        return parse_source(adapter_id)
    scheme = REQUEST_SOURCE_SCHEMES.get(adapter_source)
    if scheme is None:
        raise AdapterError("bad_source", f"adapter_source {adapter_source!r} is not supported; "
                           "use hub, s3 or local")
    return parse_source(adapter_id if adapter_id.startswith(scheme) else scheme + adapter_id)


def dynamic_name(source: AdapterSource) -> str:
    """The name a request-loaded adapter gets when its id is not a usable name."""
    return "dynamic-" + hashlib.sha256(source.uri.encode()).hexdigest()[:16]


def hub_guess(adapter_id: str) -> AdapterSource | None:
    """LoRAX treats an unknown `org/repo` id as a hub adapter; so do we, when allowed."""
    if "/" not in adapter_id or "://" in adapter_id:
        return None
    try:
        return parse_source(HF_SCHEME + adapter_id)
    except AdapterError:
        return None


class DynamicPolicy:
    """The `--allow-dynamic-adapters` prefixes, canonicalised once."""

    def __init__(self, prefixes: list[str]) -> None:
        self.remote_prefixes: list[str] = []
        self.local_prefixes: list[str] = []
        for prefix in prefixes:
            if prefix.startswith((HF_SCHEME, S3_SCHEME)):
                self.remote_prefixes.append(prefix)
            elif prefix.startswith(FILE_SCHEME) or prefix.startswith("/"):
                path = prefix[len(FILE_SCHEME):] if prefix.startswith(FILE_SCHEME) else prefix
                self.local_prefixes.append(os.path.realpath(path))
            else:
                raise ValueError(f"--allow-dynamic-adapters prefix {prefix!r} must start with "
                                 "hf://, s3://, file:// or /")

    @property
    def enabled(self) -> bool:
        return bool(self.remote_prefixes or self.local_prefixes)

    def allows(self, source: AdapterSource) -> bool:
        if source.kind == "local":
            real = os.path.realpath(source.location)
            return any(real == p or real.startswith(p.rstrip("/") + "/")
                       for p in self.local_prefixes)
        return any(_within(source.uri, p) for p in self.remote_prefixes)


def _within(uri: str, prefix: str) -> bool:
    if uri == prefix:
        return True
    if not uri.startswith(prefix):
        return False
    return prefix.endswith("/") or uri[len(prefix)] in "/@"
