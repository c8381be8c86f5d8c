"""The admin API's registration body: credentials are accepted, typed, and never shown
except by the sender's `wire_body`."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from loraplex.contracts.adapters import AdapterRegistration, Preload

SECRETS = {"hf_token": "hf_secret-token", "aws_access_key_id": "AKIDSECRET",
           "aws_secret_access_key": "aws-secret-key", "aws_session_token": "aws-session"}


def test_credentials_are_accepted_and_revealed_only_on_request() -> None:
    body = AdapterRegistration.model_validate({"source": "s3://bucket/prefix",
                                               "credentials": SECRETS})
    assert body.credentials.revealed() == SECRETS
    assert body.wire_body() == {"source": "s3://bucket/prefix", "pinned": False,
                                "preload": None, "credentials": SECRETS}


def test_the_wire_body_is_read_back_as_the_same_registration() -> None:
    sent = AdapterRegistration(source="hf://o/r", pinned=True, preload=Preload.DEVICE,
                               credentials={"hf_token": "t"})
    received = AdapterRegistration.model_validate(sent.wire_body())
    assert received.preload is Preload.DEVICE and received.pinned
    assert received.credentials.revealed() == {"hf_token": "t"}


@pytest.mark.parametrize("preload", ["ram", "disk", 1])
def test_preload_is_host_device_or_unset(preload) -> None:
    with pytest.raises(ValidationError):
        AdapterRegistration.model_validate({"source": "/a", "preload": preload})


def test_credentials_are_optional_and_each_field_too() -> None:
    assert AdapterRegistration.model_validate({"source": "/a"}).credentials is None
    body = AdapterRegistration.model_validate({"source": "hf://o/r",
                                               "credentials": {"hf_token": "t"}})
    assert body.credentials.revealed() == {"hf_token": "t"}


def test_no_repr_dump_or_log_line_shows_a_secret(caplog) -> None:
    body = AdapterRegistration.model_validate({"source": "s3://bucket/prefix",
                                               "credentials": SECRETS})
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("registering %r %s", body, body)
    shown = " ".join([repr(body), str(body), body.model_dump_json(), str(body.model_dump()),
                      caplog.text])
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
