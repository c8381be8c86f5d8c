"""Content digest of an adapter, the same whatever source its files came from.

Only the files that define the adapter count (config and weights, in sorted name order,
each as name, size and bytes), so a README or a training checkpoint beside them does not
change it, and the same adapter served from S3, the hub or a local folder reports the
same digest: the operator can compare what each pod loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

_CHUNK = 1 << 20


def content_digest(files: Iterable[tuple[str, bytes | Path]]) -> str:
    """`sha256:<hex>` over (file name, content) pairs; content is bytes or a file to read."""
    digest = hashlib.sha256()
    for name, content in sorted(files, key=lambda item: item[0]):
        size = len(content) if isinstance(content, bytes) else content.stat().st_size
        digest.update(name.encode() + b"\0" + str(size).encode() + b"\0")
        if isinstance(content, bytes):
            digest.update(content)
            continue
        with content.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
