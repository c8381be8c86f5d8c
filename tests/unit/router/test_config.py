"""Router settings: flags, environment, and refusals with the problem named."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from loraplex.router.config import RouterConfig
from loraplex.settings import add_settings_arguments, settings_from_namespace


def config_from(argv: list[str], environ: dict[str, str] | None = None) -> RouterConfig:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, RouterConfig)
    return settings_from_namespace(RouterConfig, parser.parse_args(argv), environ or {})


def test_pods_from_comma_lists_repeated_flags_and_environment():
    config = config_from(["--pods", "http://127.0.2.2:8080,http://127.0.2.3:8080/",
                          "--pods", "http://127.0.2.4:8080"])
    assert config.pods == ["http://127.0.2.2:8080", "http://127.0.2.3:8080",
                           "http://127.0.2.4:8080"]
    from_env = config_from([], {"LORAPLEX_PODS": "http://a:1,http://b:2",
                                "LORAPLEX_ADMIN_TOKEN": "t", "LORAPLEX_POLICY": "random"})
    assert (from_env.pods, from_env.admin_token, from_env.policy) == (
        ["http://a:1", "http://b:2"], "t", "random")


@pytest.mark.parametrize(("changes", "problem"), [
    ({"port": 0}, "port must be in"),
    ({"policy": "fastest"}, "policy must be one of"),
    ({"max_attempts": 0}, "max_attempts must be positive"),
    ({"pod_poll_s": 0}, "pod_poll_s must be positive"),
    ({"spill_threshold": -1}, "spill_threshold must not be negative"),
    ({"pods": ["10.0.0.5:8080"]}, "is not http"),
    ({"placements_file": "p.json", "placements_configmap": "cm"}, "not both"),
])
def test_bad_settings_are_refused(changes, problem):
    with pytest.raises(ValueError, match=problem):
        RouterConfig(**changes)


def test_the_cli_names_a_bad_pod_url_and_exits_non_zero():
    result = subprocess.run([sys.executable, "-m", "loraplex.cli", "router", "--pods", "pod-0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'pod-0' is not http(s)://host:port" in result.stderr


def test_the_router_imports_without_torch():
    code = ("import sys, loraplex.router.main, loraplex.router.app; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.split() == ["False", "False"]
