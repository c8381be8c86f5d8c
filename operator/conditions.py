"""kstatus conditions: set one by type, keeping `lastTransitionTime` while status holds.

Lists are replaced whole by a merge patch, so callers always build the complete list.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: Iterable[Mapping[str, Any]], type_: str, status: bool,
                  reason: str, message: str, generation: int | None,
                  now: str) -> list[dict[str, Any]]:
    """A copy of `conditions` with `type_` set; other conditions are kept in order."""
    text = "True" if status else "False"
    result, found = [], False
    for condition in conditions:
        if condition.get("type") != type_:
            result.append(dict(condition))
            continue
        found = True
        since = condition.get("lastTransitionTime") if condition.get("status") == text else now
        result.append(_condition(type_, text, reason, message, generation, since or now))
    if not found:
        result.append(_condition(type_, text, reason, message, generation, now))
    return result


def _condition(type_: str, status: str, reason: str, message: str, generation: int | None,
               since: str) -> dict[str, Any]:
    condition = {"type": type_, "status": status, "reason": reason, "message": message,
                 "lastTransitionTime": since}
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def merge_patch_for(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """`new` plus explicit nulls for top-level keys that `old` has and `new` dropped."""
    return {**{key: None for key in old if key not in new}, **new}
