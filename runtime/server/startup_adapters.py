"""Adapters to register when the pod starts: `--adapter NAME=SOURCE` and `--adapters-file`.

The file is YAML, a list of `{name, source, pinned?, preload?}` (or a mapping with an
`adapters:` key holding that list). Both are read before the model loads, so that a
typo fails the start at once instead of after minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loraplex.contracts.adapters import Preload
from loraplex.runtime.config import ServerConfig

KEYS = frozenset({"name", "source", "pinned", "preload"})


@dataclass(frozen=True, slots=True)
class StartupAdapter:
    name: str
    source: str
    pinned: bool = False
    preload: Preload | None = None


def _from_entry(entry: Any, where: str) -> StartupAdapter:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: each adapter must be a mapping with name and source")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(KEYS)}")
    name, source = entry.get("name"), entry.get("source")
    if not isinstance(name, str) or not name or not isinstance(source, str) or not source:
        raise ValueError(f"{where}: name and source must be non-empty strings")
    pinned = entry.get("pinned", False)
    if not isinstance(pinned, bool):
        raise ValueError(f"{where}: pinned must be true or false")
    preload = entry.get("preload")
    try:
        preload = None if preload is None else Preload(preload)
    except ValueError:
        raise ValueError(f"{where}: preload must be one of "
                         f"{[p.value for p in Preload]}") from None
    return StartupAdapter(name, source, pinned, preload)


def read_adapters_file(path: str | Path) -> list[StartupAdapter]:
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read adapters file {path}: {error}") from error
    if isinstance(document, dict) and set(document) == {"adapters"}:
        document = document["adapters"]
    if document is None:
        return []
    if not isinstance(document, list):
        raise ValueError(f"{path}: expected a list of adapters")
    return [_from_entry(entry, f"{path}[{index}]") for index, entry in enumerate(document)]


def startup_adapters(config: ServerConfig) -> list[StartupAdapter]:
    """Flags first, then the file; a name given twice is an error."""
    adapters = []
    for item in config.adapter:
        name, _, source = item.partition("=")
        if not name or not source:
            raise ValueError(f"--adapter takes NAME=SOURCE, got {item!r}")
        adapters.append(StartupAdapter(name, source))
    if config.adapters_file:
        adapters += read_adapters_file(config.adapters_file)
    seen: set[str] = set()
    for adapter in adapters:
        if adapter.name in seen:
            raise ValueError(f"adapter {adapter.name!r} is listed twice at start-up")
        seen.add(adapter.name)
    return adapters
