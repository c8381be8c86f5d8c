"""Writes the README's reference sections from the code, so the documentation cannot drift.

Each section sits between `<!-- BEGIN GENERATED: NAME -->` and `<!-- END GENERATED: NAME -->`
markers and is rebuilt from the one place its facts are declared: the settings dataclasses
that each `loraplex` subcommand names (flag, environment variable, default, help) and the
CRD schemas that `loraplex crds` generates from the operator's models (path, type,
default, validation, description). `python -m loraplex.docs` rewrites the sections;
`--check` writes nothing and exits 1 when one is stale (a unit test runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraplex.cli import import_object
from loraplex.settings import ENV_PREFIX, settings_table

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: "
    r"(?P=name) -->)", re.S)
SETTINGS_HEADER = ("Flag", "Environment", "Default", "Description")
CRD_HEADER = ("Field", "Type", "Default", "Validation", "Description")
HOME_STAND_IN = "/home-of-the-user"


class StaleDocs(Exception):
    """The README lacks a section, has an unknown one, or differs from the code."""


def _cell(text: str) -> str:
    return str(text).replace("\n", " ").replace("|", "\\|").strip()


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text != "" else ""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@contextmanager
def _fresh_environment() -> Iterator[None]:
    """Defaults as a fresh shell on any machine computes them: no `LORAPLEX_*` variables,
    and a stand-in home folder, shown as `~` (the cache folder's default uses both)."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        del os.environ[name]
    os.environ["HOME"] = HOME_STAND_IN
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_rows(settings_class: type) -> list[tuple[str, ...]]:
    """One row per setting: flag, environment variable, default, help (with choices)."""
    with _fresh_environment():
        table = settings_table(settings_class)
    rows = []
    for field, (flag, env, default, help_text) in zip(
            dataclasses.fields(settings_class), table, strict=True):
        if isinstance(field.default, bool):
            flag = f"{flag} / --no-{flag[2:]}"
        choices = field.metadata.get("choices")
        if choices:
            help_text += f" (one of: {', '.join(choices)})"
        default = default.replace(HOME_STAND_IN, "~")
        rows.append((_code(flag), _code(env), _code(default), _cell(help_text)))
    return rows


def command_settings(command: str) -> str:
    """The settings table of `loraplex COMMAND`, from the classes the CLI itself parses."""
    from loraplex.cli import COMMANDS

    rows = []
    for path in COMMANDS[command].settings:
        rows += settings_rows(import_object(path))
    return _table(SETTINGS_HEADER, rows)


def _type_name(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type", "any")
    if kind == "array":
        return "[]" + _type_name(node.get("items", {}))
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + _type_name(node["additionalProperties"])
    return kind


def _bound(node: dict[str, Any], side: str) -> str | None:
    value = node.get(side)
    if value is None:
        return None
    exclusive = node.get("exclusiveMinimum" if side == "minimum" else "exclusiveMaximum")
    if side == "minimum":
        return f"> {value}" if exclusive is True else f">= {value}"
    return f"< {value}" if exclusive is True else f"<= {value}"


def _validation(node: dict[str, Any], required: bool) -> str:
    rules = ["required"] if required else []
    if "enum" in node:
        rules.append("one of " + ", ".join(f"`{value}`" for value in node["enum"]))
    rules += [bound for side in ("minimum", "maximum") if (bound := _bound(node, side))]
    shortest, longest = node.get("minLength"), node.get("maxLength")
    if shortest is not None and longest is not None:
        rules.append(f"length {shortest}..{longest}")
    elif longest is not None or shortest is not None:
        rules.append(f"length <= {longest}" if longest is not None else f"length >= {shortest}")
    if "pattern" in node:
        rules.append(f"pattern `{node['pattern']}`")
    rules += [f"{rule['message']} (CEL)" for rule in node.get("x-kubernetes-validations", [])]
    if node.get("x-kubernetes-list-type") == "map":
        rules.append("list map keyed by " + ", ".join(node["x-kubernetes-list-map-keys"]))
    return "; ".join(_cell(rule) for rule in rules)


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    return _code(value if isinstance(value, str) and value else json.dumps(value))


def schema_rows(node: dict[str, Any], path: str,
                required: bool = False) -> Iterator[tuple[str, ...]]:
    """Rows for `node` and every field below it, depth first, in declaration order."""
    yield (_code(path), _code(_type_name(node)), _default(node), _validation(node, required),
           _cell(node.get("description", "")))
    children = node.get("properties")
    if children is None and node.get("type") == "array":
        children = node.get("items", {}).get("properties")
        path += "[]"
        parent = node.get("items", {})
    else:
        parent = node
    for name, child in (children or {}).items():
        yield from schema_rows(child, f"{path}.{name}", name in parent.get("required", []))


def crd_fields(kind: str) -> str:
    """Every spec and status field of one custom resource, from its generated CRD schema."""
    from loraplex.operator.crdgen import KINDS, build_crd

    (match,) = [crd_kind for crd_kind in KINDS if crd_kind.kind == kind]
    schema = build_crd(match)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rows = []
    for part in ("spec", "status"):
        rows += list(schema_rows(schema["properties"][part], part,
                                 part in schema.get("required", [])))
    return _table(CRD_HEADER, rows)


def generators() -> dict[str, Callable[[], str]]:
    """Section name → function that renders it."""
    from loraplex.cli import COMMANDS
    from loraplex.operator.crdgen import KINDS

    sections: dict[str, Callable[[], str]] = {
        f"{command}-settings": (lambda command=command: command_settings(command))
        for command in COMMANDS
    }
    for kind in KINDS:
        sections[f"crd-{kind.kind.lower()}"] = lambda kind=kind.kind: crd_fields(kind)
    return sections


def render(text: str) -> str:
    """`text` with every generated section rebuilt; `StaleDocs` if sections are missing or
    unknown (a section that is not in the README is as stale as a wrong one)."""
    sections = generators()
    found = [match["name"] for match in MARKER.finditer(text)]
    unknown = sorted(set(found) - set(sections))
    missing = sorted(set(sections) - set(found))
    if unknown or missing:
        raise StaleDocs(f"README markers: unknown sections {unknown}, missing sections "
                        f"{missing} (each needs <!-- BEGIN GENERATED: NAME --> and "
                        "<!-- END GENERATED: NAME -->)")
    return MARKER.sub(lambda m: m.group(1) + sections[m["name"]]() + "\n" + m.group(4), text)


def stale_sections(text: str) -> list[str]:
    """Names of the sections whose text differs from what the code generates."""
    fresh = {m["name"]: m["body"] for m in MARKER.finditer(render(text))}
    return [m["name"] for m in MARKER.finditer(text) if m["body"] != fresh[m["name"]]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraplex.docs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated section is stale")
    parser.add_argument("--readme", type=Path, default=README, help="the file to update")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    try:
        stale = stale_sections(text)
    except StaleDocs as error:
        print(f"{args.readme}: {error}", file=sys.stderr)
        return 1
    if args.check:
        for name in stale:
            print(f"{args.readme}: section {name!r} is stale: run `python -m loraplex.docs`",
                  file=sys.stderr)
        return 1 if stale else 0
    if stale:
        args.readme.write_text(render(text), encoding="utf-8")
    print(f"{args.readme}: {len(stale)} section(s) rewritten: {', '.join(stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
