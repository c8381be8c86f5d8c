"""The admin API's registration body: credentials are accepted, typed, and never shown."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from loraplex.runtime.adapters.source import SourceCredentials
from loraplex.runtime.server.admin_protocol import AdapterRegistration

SECRETS = {"hf_token": "hf_secret-token", "aws_access_key_id": "AKIDSECRET",
           "aws_secret_access_key": "aws-secret-key", "aws_session_token": "aws-session"}


def test_credentials_are_accepted_and_become_source_credentials() -> None:
    body = AdapterRegistration.model_validate({"source": "s3://bucket/prefix",
                                               "credentials": SECRETS})
    assert body.credentials.source_credentials() == SourceCredentials(**SECRETS)


def test_credentials_are_optional_and_each_field_too() -> None:
    assert AdapterRegistration.model_validate({"source": "/a"}).credentials is None
    body = AdapterRegistration.model_validate({"source": "hf://o/r",
                                               "credentials": {"hf_token": "t"}})
    assert body.credentials.source_credentials() == SourceCredentials(hf_token="t")


def test_no_repr_dump_or_log_line_shows_a_secret(caplog) -> None:
    body = AdapterRegistration.model_validate({"source": "s3://bucket/prefix",
                                               "credentials": SECRETS})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("registering %r %s", body, body)
    shown = " ".join([repr(body), str(body), body.model_dump_json(), str(body.model_dump()),
                      repr(body.credentials.source_credentials()), caplog.text])
    for secret in SECRETS.values():
        assert secret not in shown


@pytest.mark.parametrize("credentials", [
    {"password": "x"},  # unknown field
    {"hf_token": 123},  # not a string
    {"hf_token": "x" * 10_000},  # too long
    "hf_token",  # not an object
])
def test_malformed_credentials_are_refused(credentials) -> None:
    with pytest.raises(ValidationError):
        AdapterRegistration.model_validate({"source": "/a", "credentials": credentials})
