"""`AsyncEngine` is an `EngineClient`: every member the server relies on exists, as the
same kind of member (property, method, coroutine) with the same parameters."""

from __future__ import annotations

import inspect

from loraplex.runtime.engine.async_engine import AsyncEngine
from loraplex.runtime.server.engine_client import EngineClient


def _kind(member: object) -> str:
    if isinstance(member, property):
        return "property"
    if inspect.iscoroutinefunction(member):
        return "coroutine"
    return "method"  # a plain method, or an async generator returning an AsyncIterator


def _members(cls: type) -> dict[str, object]:
    return {name: member for name, member in vars(cls).items() if not name.startswith("_")}


def test_async_engine_implements_every_member_of_the_protocol():
    members = _members(EngineClient)
    assert {"tokenizer", "adapters", "generate", "validate", "stats"} <= set(members)
    for name, declared in members.items():
        implemented = inspect.getattr_static(AsyncEngine, name, None)
        assert implemented is not None, f"AsyncEngine lacks {name}"
        assert _kind(implemented) == _kind(declared), name
        if _kind(declared) != "property":
            assert list(inspect.signature(implemented).parameters) == \
                list(inspect.signature(declared).parameters), name
