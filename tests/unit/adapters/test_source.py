"""Source strings, adapter names and the dynamic-source policy: parsing and path safety."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants
import pytest

from loraplex.runtime.adapters.dynamic import DynamicPolicy, hub_guess, request_source
from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.naming import validate_adapter_name
from loraplex.runtime.adapters.source import parse_source


@pytest.mark.parametrize("text, kind, uri, location, path, revision", [
    ("hf://my-org/support-bot", "hf", "hf://my-org/support-bot", "my-org/support-bot", "",
     None),
    ("hf://my-org/support-bot@v2", "hf", "hf://my-org/support-bot@v2", "my-org/support-bot",
     "", "v2"),
    ("hf://org/repo/adapters/sql@refs/pr/3", "hf", "hf://org/repo/adapters/sql@refs/pr/3",
     "org/repo", "adapters/sql", "refs/pr/3"),
    ("s3://bucket-1/adapters/sql/", "s3", "s3://bucket-1/adapters/sql", "bucket-1",
     "adapters/sql", None),
    ("s3://bucket-1", "s3", "s3://bucket-1", "bucket-1", "", None),
    ("file:///mnt/adapters/x/", "local", "/mnt/adapters/x", "/mnt/adapters/x", "", None),
    ("/mnt/adapters/../adapters/x", "local", "/mnt/adapters/x", "/mnt/adapters/x", "", None),
])
def test_sources_parse_to_canonical_uris(text, kind, uri, location, path, revision) -> None:
    source = parse_source(text)
    assert (source.kind, source.uri, source.location, source.path, source.revision) == (
        kind, uri, location, path, revision)
    assert parse_source(source.uri) == source  # canonical form is a fixed point


def test_relative_local_path_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_source("adapters/x").uri == str(tmp_path / "adapters" / "x")


@pytest.mark.parametrize("text, words", [
    ("", "non-empty"),
    ("http://example.com/adapter", "unsupported adapter source"),
    ("gs://bucket/x", "unsupported adapter source"),
    ("file://relative/path", "absolute path"),
    ("hf://", "expected hf://org/repo"),
    ("hf://org/../etc", "expected hf://org/repo"),
    ("hf://org/repo@", "empty revision"),
    ("hf://org/re po", "invalid hub repo id"),
    ("s3://UPPER/x", "invalid S3 bucket"),
    ("s3://bucket/a/../../b", "'..' are not allowed"),
])
def test_bad_sources_are_refused(text: str, words: str) -> None:
    with pytest.raises(AdapterError) as refused:
        parse_source(text)
    assert refused.value.reason == "bad_source"
    assert words in str(refused.value)


@pytest.mark.parametrize("name", ["sql", "my-org/support-bot", "a.b_c-1", "A1/b2/c3/d4",
                                  "x" * 128])
def test_valid_names(name: str) -> None:
    assert validate_adapter_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../etc", "a/../b", "/abs", "a//b", ".hidden",
                                  "a/", "with space", "x" * 129, "a/b/c/d/e", "a\\b", "a\0b",
                                  "café"])
def test_names_that_could_become_paths_are_refused(name: str) -> None:
    with pytest.raises(AdapterError) as refused:
        validate_adapter_name(name)
    assert refused.value.reason == "bad_name"


def test_request_sources_follow_lorax_adapter_source() -> None:
    assert request_source("my-org/bot", None) is None  # a name, unless registered or allowed
    assert request_source("my-org/bot", "hub").uri == "hf://my-org/bot"
    assert request_source("bucket/x", "s3").uri == "s3://bucket/x"
    assert request_source("s3://bucket/x", "s3").uri == "s3://bucket/x"
    assert request_source("/mnt/a", "local").uri == "/mnt/a"
    assert request_source("hf://org/a", None).uri == "hf://org/a"
    assert hub_guess("org/a").uri == "hf://org/a"
    assert hub_guess("plain-name") is None
    with pytest.raises(AdapterError, match="needs an absolute path"):
        request_source("relative/dir", "local")
    with pytest.raises(AdapterError, match="'pbase' is not supported"):
        request_source("x/1", "pbase")


def test_dynamic_prefixes_respect_boundaries() -> None:
    policy = DynamicPolicy(["hf://my-org/", "s3://bucket/team", "hf://other/repo@main"])
    allowed = ["hf://my-org/a", "hf://my-org/a@v1", "s3://bucket/team/a", "s3://bucket/team",
               "hf://other/repo@main"]
    refused = ["hf://my-org-evil/a", "s3://bucket/team-b/a", "s3://bucket/x",
               "hf://other/repo@main-evil", "hf://other/repo", "/tmp/x"]
    for uri in allowed:
        assert policy.allows(parse_source(uri)), uri
    for uri in refused:
        assert not policy.allows(parse_source(uri)), uri
    assert not DynamicPolicy([]).enabled
    with pytest.raises(ValueError, match="must start with"):
        DynamicPolicy(["my-org/"])


def test_local_prefix_resolves_dots_and_symlinks(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "a").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    os.symlink(secret, allowed / "link")
    policy = DynamicPolicy([f"file://{allowed}"])
    assert policy.allows(parse_source(str(allowed / "a")))
    assert not policy.allows(parse_source(f"{allowed}/../secret"))
    assert not policy.allows(parse_source(str(allowed / "link")))
    assert not policy.allows(parse_source(f"{allowed}-sibling/a"))


def test_hub_fetch_fails_cleanly_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AdapterError) as refused:
        parse_source("hf://some-org/some-adapter@main").fetch(tmp_path)
    assert refused.value.reason == "download_failed"
    assert "hf://some-org/some-adapter@main" in str(refused.value)
    assert list(tmp_path.iterdir()) == []
