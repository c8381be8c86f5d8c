"""The `loraplex` command: `serve` (a runtime pod), `router`, `operator`, `crds`.

Each subcommand names its settings dataclasses and its entry point by import path, so
only the chosen one is imported: `loraplex operator` and `loraplex router` never load torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any

from loraplex import __version__
from loraplex.settings import add_settings_arguments, settings_from_namespace


@dataclass(frozen=True)
class Command:
    help: str
    settings: tuple[str, ...]  # "module:Class" of each settings dataclass, in call order
    entry: str  # "module:function" called with one instance of each settings class


COMMANDS = {
    "serve": Command(
        "run a runtime pod: the multi-LoRA engine and its HTTP server",
        ("loraplex.runtime.config:EngineConfig", "loraplex.runtime.config:ServerConfig"),
        "loraplex.runtime.server.launch:serve",
    ),
    "router": Command(
        "run the adapter-aware router in front of a base model's pods",
        ("loraplex.router.config:RouterConfig",),
        "loraplex.router.main:run",
    ),
    "operator": Command(
        "run the Kubernetes operator (kopf)",
        ("loraplex.operator.config:OperatorConfig",),
        "loraplex.operator.main:run",
    ),
    "crds": Command(
        "write (or --check) the CRD YAML generated from the operator's models",
        ("loraplex.operator.crdgen:CrdGenConfig",),
        "loraplex.operator.crdgen:run",
    ),
}


def import_object(path: str) -> Any:
    """The object `package.module:name` names, importing only its module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="loraplex", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"loraplex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen not in COMMANDS:
        if chosen is not None:
            parser.error(f"unknown command {chosen!r}; choose from {', '.join(COMMANDS)}")
        parser.parse_args(argv)
        parser.print_help()
        return 2
    command = COMMANDS[chosen]
    sub_parser = argparse.ArgumentParser(prog=f"loraplex {chosen}", description=command.help)
    classes = [import_object(path) for path in command.settings]
    for settings_class in classes:
        add_settings_arguments(sub_parser, settings_class)
    rest = list(argv)
    rest.remove(chosen)
    namespace = sub_parser.parse_args(rest)
    try:
        settings = [settings_from_namespace(cls, namespace) for cls in classes]
    except ValueError as error:
        sub_parser.error(str(error))
    result = import_object(command.entry)(*settings)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
