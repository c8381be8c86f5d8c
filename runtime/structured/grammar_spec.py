"""A request's output constraint as a hashable value: the key of the compiled-grammar cache.

Every protocol (LoRAX `response_format`, OpenAI `response_format` and tools, vLLM
`guided_*` and `structured_outputs`) is mapped to one `GrammarSpec` by the server; the
cache compiles each distinct spec once. JSON schemas are keyed by their compact JSON text, so the
same schema sent with different spacing hits the same entry (key order is kept: it is
the order in which the output writes an object's properties).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


class GrammarKind(str, Enum):
    JSON_SCHEMA = "json_schema"  # source: compact JSON text of the schema
    JSON_OBJECT = "json_object"  # any JSON value (source unused)
    REGEX = "regex"  # source: the pattern, matched in full
    CHOICE = "choice"  # source: JSON list of the allowed strings
    GRAMMAR = "grammar"  # source: EBNF (GBNF) text with a `root` rule


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    kind: GrammarKind
    source: str = ""

    @classmethod
    def json_schema(cls, schema: Any) -> GrammarSpec:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as error:
                raise ValueError(f"the JSON schema is not valid JSON: {error}") from error
        if not isinstance(schema, dict | bool):
            raise ValueError("a JSON schema must be an object (or true/false)")
        return cls(GrammarKind.JSON_SCHEMA, compact_json(schema))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls(GrammarKind.JSON_OBJECT)

    @classmethod
    def regex(cls, pattern: str) -> GrammarSpec:
        if not pattern:
            raise ValueError("the regex is empty")
        return cls(GrammarKind.REGEX, pattern)

    @classmethod
    def choice(cls, choices: list[str]) -> GrammarSpec:
        if not choices or any(not isinstance(item, str) or not item for item in choices):
            raise ValueError("choices must be a non-empty list of non-empty strings")
        return cls(GrammarKind.CHOICE, json.dumps(choices, ensure_ascii=False))

    @classmethod
    def grammar(cls, ebnf: str) -> GrammarSpec:
        if not ebnf.strip():
            raise ValueError("the grammar is empty")
        return cls(GrammarKind.GRAMMAR, ebnf)

    def choice_ebnf(self) -> str:
        """An EBNF grammar whose root is exactly one of the choices."""
        choices = json.loads(self.source)
        # JSON string literals are EBNF string literals (same escapes)
        return "root ::= " + " | ".join(json.dumps(item, ensure_ascii=False)
                                         for item in choices)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
