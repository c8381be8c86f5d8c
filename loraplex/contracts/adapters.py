"""The adapter admin API (`/v1/adapters`): adapter states, tiers, requests and answers.

The runtime pod writes these answers, the operator drives the API with them and the router
reads `GET /v1/adapters` to learn what a pod holds; all three import this module. Answers
are read strictly (a wrong type or an unknown state is an error, never a guess) but ignore
fields they do not know, so that a newer pod does not break an older reader.

Credentials in a registration are secrets: held as `SecretStr`, so no repr, log line or
JSON dump shows them; only the sender reveals them, in `AdapterRegistration.wire_body`.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, computed_field

SECRET_MAX_CHARS = 8192


class Tier(str, Enum):
    """Where an adapter's weights are: downloaded to `disk`, parsed into `host` RAM, copied
    into a `device` slot. Also the `tier` label of the pod's adapter metrics."""

    DISK = "disk"
    HOST = "host"
    DEVICE = "device"

    def __str__(self) -> str:
        return self.value


class AdapterState(str, Enum):
    """An adapter's state on one pod.

    downloading: a fetch/parse is running; disk: validated, evicted from RAM (reloads on
    use); host: parsed weights in (pinned) RAM; device: in a device slot; error: refused
    or failed (`error` says why)."""

    DOWNLOADING = "downloading"
    DISK = Tier.DISK.value
    HOST = Tier.HOST.value
    DEVICE = Tier.DEVICE.value
    ERROR = "error"

    def __str__(self) -> str:
        return self.value

    @property
    def loaded(self) -> bool:
        """Weights in RAM or on the device: the pod serves it without a fetch."""
        return self in (AdapterState.HOST, AdapterState.DEVICE)

    @property
    def failed(self) -> bool:
        return self is AdapterState.ERROR

    @property
    def tier(self) -> Tier | None:
        """The tier the weights are in; None while downloading or failed."""
        if self in (AdapterState.DOWNLOADING, AdapterState.ERROR):
            return None
        return Tier(self.value)


class Preload(str, Enum):
    """How far a registration loads the adapter before any request asks for it."""

    HOST = Tier.HOST.value
    DEVICE = Tier.DEVICE.value

    def __str__(self) -> str:
        return self.value


def _secret(description: str) -> Any:
    return Field(None, max_length=SECRET_MAX_CHARS, description=description)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class AdapterCredentials(_Request):
    """Secrets for one adapter's fetch; a field left out falls back to the pod's environment."""

    hf_token: SecretStr | None = _secret("Hugging Face token for an hf:// source")
    aws_access_key_id: SecretStr | None = _secret("for an s3:// source")
    aws_secret_access_key: SecretStr | None = _secret("for an s3:// source")
    aws_session_token: SecretStr | None = _secret("temporary AWS credentials only")

    def revealed(self) -> dict[str, str]:
        """The fields that are set, in clear: only for handing them to their one user."""
        return {name: value.get_secret_value() for name, value in self if value is not None}


class AdapterRegistration(_Request):
    """Body of `PUT /v1/adapters/{name}`."""

    source: str = Field(min_length=1, description="local path, file://, hf://org/repo[@rev] "
                        "or s3://bucket/prefix")
    pinned: bool = False
    preload: Preload | None = Field(None, strict=False)
    credentials: AdapterCredentials | None = Field(
        None, description="used for this adapter's fetches only; never echoed")

    def wire_body(self) -> dict[str, Any]:
        """The JSON body to send, credentials in clear (the sender's side only)."""
        body: dict[str, Any] = self.model_dump(mode="json", exclude={"credentials"})
        if self.credentials is not None:
            body["credentials"] = self.credentials.revealed()
        return body


class AdapterStatus(BaseModel):
    """One adapter as a pod reports it: the answer of `GET`/`PUT /v1/adapters/{name}` and an
    entry of `GET /v1/adapters`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    state: AdapterState
    source: str | None = None
    rank: int | None = None
    size_bytes: int | None = None
    digest: str | None = None
    error: str | None = None
    error_reason: str | None = Field(None, description="stable short code of `error`")
    pinned: bool | None = None
    preload: Preload | None = None
    dynamic: bool = False
    slot: int | None = Field(None, description="device slot, once the weights are in it")
    in_use: int = Field(0, description="running sequences holding the adapter")
    last_used: float | None = Field(None, description="unix time of the last use")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tier(self) -> Tier | None:
        return self.state.tier

    @property
    def loaded(self) -> bool:
        return self.state.loaded

    @property
    def failed(self) -> bool:
        return self.state.failed


class AdapterList(BaseModel):
    """Answer of `GET /v1/adapters`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    adapters: list[AdapterStatus]

    def by_name(self) -> dict[str, AdapterStatus]:
        return {adapter.name: adapter for adapter in self.adapters}


class AdapterRemoval(BaseModel):
    """Answer of `DELETE /v1/adapters/{name}`: `removed` now, or `deferred` until the
    requests still using the adapter finish."""

    name: str
    deleted: Literal[True] = True
    outcome: Literal["removed", "deferred"]
