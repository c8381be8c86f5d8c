"""Turns a settings dataclass into command-line flags and `LORAPLEX_*` environment variables.

Every setting is declared once, as a dataclass field with a `help` in its metadata; the
flag (`--max-num-seqs`), the environment variable (`LORAPLEX_MAX_NUM_SEQS`) and the README
table are all derived from that one declaration, so none of them can drift.
Precedence: flag > environment variable > field default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any

ENV_PREFIX = "LORAPLEX_"


def setting(default: Any = dataclasses.MISSING, *, help: str, factory: Any = None, **extra: Any):
    """A dataclass field that documents itself; `extra` goes to argparse (e.g. `choices`)."""
    metadata = {"help": help, **extra}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _base_type(annotation: Any) -> tuple[type, bool, bool]:
    """(scalar type, is_optional, is_list) of a field annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
        origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0], optional, True
    return annotation, optional, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _convert(kind: type, text: str) -> Any:
    return _parse_bool(text) if kind is bool else kind(text)


def add_settings_arguments(parser: argparse.ArgumentParser,
                           settings_class: type) -> list[argparse.Action]:
    """One flag per field (the actions added, in field order). Defaults come from the
    environment when set there."""
    hints = typing.get_type_hints(settings_class)
    actions = []
    for field in dataclasses.fields(settings_class):
        kind, _, is_list = _base_type(hints[field.name])
        extra = {k: v for k, v in field.metadata.items() if k != "help"}
        env = env_name(field.name)
        help_text = f"{field.metadata.get('help', '')} [env {env}]"
        if is_list:
            actions.append(parser.add_argument(
                flag_name(field.name), dest=field.name, action="append", type=kind,
                default=None, help=help_text + " (repeatable)", **extra,
            ))
        elif kind is bool:
            actions.append(parser.add_argument(
                flag_name(field.name), dest=field.name, default=None,
                action=argparse.BooleanOptionalAction, help=help_text,
            ))
        else:
            actions.append(parser.add_argument(
                flag_name(field.name), dest=field.name, type=kind, default=None,
                help=help_text, **extra,
            ))
    return actions


def settings_from_namespace(settings_class: type, namespace: argparse.Namespace,
                            environ: typing.Mapping[str, str] | None = None) -> Any:
    """Build the dataclass: flag if given, else environment variable, else default."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(settings_class)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings_class):
        given = getattr(namespace, field.name, None)
        kind, _, is_list = _base_type(hints[field.name])
        if given is not None:
            values[field.name] = given
            continue
        raw = environ.get(env_name(field.name))
        if raw is None:
            continue
        try:
            if is_list:
                values[field.name] = [_convert(kind, item) for item in raw.split(",") if item]
            else:
                values[field.name] = _convert(kind, raw)
        except ValueError as error:
            raise SystemExit(f"{env_name(field.name)}: {error}") from None
    return settings_class(**values)


def settings_table(settings_class: type) -> list[tuple[str, str, str, str]]:
    """(flag, environment variable, default, help) rows, for the README and `--help`."""
    rows = []
    for field in dataclasses.fields(settings_class):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = "(required)"
        rows.append((flag_name(field.name), env_name(field.name), repr(default),
                     field.metadata.get("help", "")))
    return rows
