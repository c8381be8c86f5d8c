"""The README stays true: generated reference sections are fresh, the set-up block is what
CI runs, every quick-start snippet is tested, and the paths and flags it names exist.

The snippets themselves run against a real server in
`tests/integration/test_readme_commands.py`, which reads them with the helpers below.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraplex import docs
from loraplex.cli import COMMANDS
from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.settings import add_settings_arguments, settings_from_namespace

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SETUP_BLOCK = re.compile(r"<!-- setup -->\s*```(?:bash|sh)\n(.*?)```", re.S)  # as .ci/run
SNIPPET = re.compile(r"<!-- test: (?P<name>[a-z0-9-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```",
                     re.S)
FENCE = re.compile(r"^```\w*$", re.M)
QUICK_START = "## Quick start on one machine"
TESTED_SNIPPETS = {"serve", "curl-generate", "lorax-client", "openai", "make-adapter",
                   "register-adapter", "serve-with-adapter", "curl-adapter", "clients-adapter"}
REPO_PATH = re.compile(r"\b(?:manifests|crds|bench)/[\w./-]*\w|\bDockerfile\.\w+")


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def setup_commands(text: str) -> list[str]:
    """The set-up block's commands, read as `.ci/run` reads them."""
    block = SETUP_BLOCK.search(text)
    if block is None:
        raise ValueError("README has no <!-- setup --> block")
    return [line for line in block.group(1).splitlines()
            if line.strip() and not line.startswith("#")]


def snippets(text: str) -> dict[str, tuple[str, str]]:
    """name → (language, code) of every block tagged `<!-- test: NAME -->`."""
    found: dict[str, tuple[str, str]] = {}
    for match in SNIPPET.finditer(text):
        if match["name"] in found:
            raise ValueError(f"README tags two snippets {match['name']!r}")
        found[match["name"]] = (match["lang"], match["code"])
    return found


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


def serve_settings(command: str) -> tuple[EngineConfig, ServerConfig]:
    """A `loraplex serve ...` command line as the CLI parses it (no environment)."""
    words = shlex.split(command)
    if words[:2] != ["loraplex", "serve"]:
        raise ValueError(f"not a `loraplex serve` command: {command!r}")
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_settings_arguments(parser, EngineConfig)
    add_settings_arguments(parser, ServerConfig)
    namespace = parser.parse_args(words[2:])
    return (settings_from_namespace(EngineConfig, namespace, environ={}),
            settings_from_namespace(ServerConfig, namespace, environ={}))


def generated_table(text: str, name: str) -> list[list[str]]:
    """Cells of the rows of a generated table (header and rule skipped)."""
    body = re.search(rf"<!-- BEGIN GENERATED: {name} -->\n(.*?)<!-- END GENERATED", text, re.S)
    if body is None:
        raise ValueError(f"README has no generated section {name!r}")
    rows = body.group(1).strip().splitlines()[2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_generated_sections_are_fresh() -> None:
    assert docs.stale_sections(readme_text()) == [], "run `python -m loraplex.docs`"
    assert docs.main(["--check"]) == 0


def test_check_fails_on_a_stale_section_and_writing_fixes_it(tmp_path, capsys) -> None:
    copy = tmp_path / "README.md"
    text = readme_text()
    copy.write_text(text.replace("| `--max-num-seqs` |", "| `--max-num-seqz` |", 1))
    assert docs.main(["--check", "--readme", str(copy)]) == 1
    assert "'serve-settings' is stale" in capsys.readouterr().err
    assert docs.main(["--readme", str(copy)]) == 0
    assert copy.read_text() == text
    assert docs.main(["--check", "--readme", str(copy)]) == 0


@pytest.mark.parametrize("edit, complaint", [
    (lambda t: re.sub(r"<!-- (BEGIN|END) GENERATED: crd-adapter -->\n", "", t),
     "missing sections ['crd-adapter']"),
    (lambda t: t + "<!-- BEGIN GENERATED: nonsense -->\n<!-- END GENERATED: nonsense -->\n",
     "unknown sections ['nonsense']"),
])
def test_missing_or_unknown_sections_are_refused(tmp_path, capsys, edit, complaint) -> None:
    copy = tmp_path / "README.md"
    copy.write_text(edit(readme_text()))
    assert docs.main(["--check", "--readme", str(copy)]) == 1
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_settings_tables_list_every_flag_the_command_parses(command: str) -> None:
    parser = argparse.ArgumentParser()
    actions = []
    for path in COMMANDS[command].settings:
        module, _, name = path.partition(":")
        actions += add_settings_arguments(parser, getattr(importlib.import_module(module), name))
    parsed = {option for action in actions for option in action.option_strings}
    rows = generated_table(readme_text(), f"{command}-settings")
    documented = {flag.strip() for row in rows for flag in row[0].strip("`").split(" / ")}
    assert documented == parsed
    assert all(row[1].strip("`").startswith("LORAPLEX_") and row[3] for row in rows)


def _schema_paths(node: dict[str, Any], path: str) -> set[str]:
    paths = {path}
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        node, path = node["items"], path + "[]"
    for name, child in node.get("properties", {}).items():
        paths |= _schema_paths(child, f"{path}.{name}")
    return paths


@pytest.mark.parametrize("plural, section_name", [("basemodeldeployments",
                                                   "crd-basemodeldeployment"),
                                                  ("adapters", "crd-adapter")])
def test_crd_tables_list_every_field_of_the_crd_files(plural: str, section_name: str) -> None:
    crd = yaml.safe_load((ROOT / "crds" / f"loraplex.dev_{plural}.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    expected = _schema_paths(schema["spec"], "spec") | _schema_paths(schema["status"], "status")
    rows = generated_table(readme_text(), section_name)
    assert {row[0].strip("`") for row in rows} == expected


def test_setup_block_has_the_two_commands_ci_and_users_run() -> None:
    first, second, *rest = setup_commands(readme_text())
    assert rest == []
    assert first.split("&&")[-1].strip() == "loraplex serve"
    assert "ruff check ." in second and "python -m pytest" in second


def test_quick_start_serves_with_the_set_up_command() -> None:
    text = readme_text()
    first = setup_commands(text)[0]
    assert snippets(text)["serve"] == ("bash", first.split("&&")[-1].strip() + "\n")
    entry = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert entry["loraplex"] == "loraplex.cli:main"  # the tests run `python -m loraplex.cli`


def test_every_quick_start_block_is_tagged_for_testing() -> None:
    quick_start = section(readme_text(), QUICK_START)
    tagged = snippets(quick_start)
    assert set(tagged) == TESTED_SNIPPETS
    assert len(FENCE.findall(quick_start)) == 2 * len(tagged), "an untagged code block"


def test_the_start_up_adapter_command_parses() -> None:
    _, code = snippets(readme_text())["serve-with-adapter"]
    _, server = serve_settings(code.strip().replace("$PWD", "/srv"))
    assert server.adapter == ["my-lora=/srv/my-lora"]


def test_paths_named_in_the_readme_exist() -> None:
    named = set(REPO_PATH.findall(readme_text()))
    assert "manifests/base" in named
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert missing == []


def test_benchmark_markers_are_there_once_in_order() -> None:
    text = readme_text()
    begin, end = "<!-- BEGIN BENCHMARKS -->", "<!-- END BENCHMARKS -->"
    assert text.count(begin) == text.count(end) == 1
    assert text.index(begin) < text.index(end)
