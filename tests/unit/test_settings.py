"""Flags, environment variables and defaults all come from one dataclass declaration."""

from __future__ import annotations

import argparse

import pytest

from loraplex.cli import main
from loraplex.runtime.config import EngineConfig, ServerConfig
from loraplex.settings import add_settings_arguments, settings_from_namespace, settings_table


def _parse(settings_class, argv, environ):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, settings_class)
    return settings_from_namespace(settings_class, parser.parse_args(argv), environ)


def test_flag_beats_environment_beats_default() -> None:
    assert _parse(EngineConfig, [], {}).max_num_seqs == EngineConfig().max_num_seqs
    from_env = _parse(EngineConfig, [], {"LORAPLEX_MAX_NUM_SEQS": "7"})
    assert from_env.max_num_seqs == 7
    from_flag = _parse(EngineConfig, ["--max-num-seqs", "9"], {"LORAPLEX_MAX_NUM_SEQS": "7"})
    assert from_flag.max_num_seqs == 9


def test_booleans_and_lists_from_flags_and_environment() -> None:
    assert _parse(EngineConfig, ["--enforce-eager"], {}).enforce_eager is True
    assert _parse(EngineConfig, [], {"LORAPLEX_ENFORCE_EAGER": "yes"}).enforce_eager is True
    server = _parse(ServerConfig, ["--adapter", "a=/x", "--adapter", "b=s3://b/p"], {})
    assert server.adapter == ["a=/x", "b=s3://b/p"]
    env = _parse(EngineConfig, [], {"LORAPLEX_ALLOW_DYNAMIC_ADAPTERS": "hf://org/,s3://b/"})
    assert env.allow_dynamic_adapters == ["hf://org/", "s3://b/"]


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SystemExit, match="LORAPLEX_MAX_NUM_SEQS"):
        _parse(EngineConfig, [], {"LORAPLEX_MAX_NUM_SEQS": "many"})
    with pytest.raises(SystemExit, match="LORAPLEX_ENFORCE_EAGER"):
        _parse(EngineConfig, [], {"LORAPLEX_ENFORCE_EAGER": "perhaps"})


@pytest.mark.parametrize(("argv", "message"), [
    (["--max-num-seqs", "0"], "max_num_seqs must be positive"),
    (["--kv-cache-fraction", "1.5"], "kv_cache_fraction"),
])
def test_invalid_engine_settings_are_refused(argv, message) -> None:
    with pytest.raises(ValueError, match=message):
        _parse(EngineConfig, argv, {})


def test_invalid_server_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="NAME=SOURCE"):
        _parse(ServerConfig, ["--adapter", "no-equals-sign"], {})
    with pytest.raises(ValueError, match="port"):
        _parse(ServerConfig, ["--port", "70000"], {})


def test_cli_reports_bad_settings_as_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--max-num-seqs", "-1"])
    assert exit_info.value.code == 2
    assert "max_num_seqs must be positive" in capsys.readouterr().err


def test_cli_refuses_unknown_commands(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fly"])
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_settings_table_lists_every_field_once() -> None:
    rows = settings_table(EngineConfig)
    flags = [row[0] for row in rows]
    assert len(flags) == len(set(flags))
    assert rows[flags.index("--max-num-seqs")][:2] == ("--max-num-seqs", "LORAPLEX_MAX_NUM_SEQS")
    assert all(row[3] for row in rows), "every setting needs a help text"
