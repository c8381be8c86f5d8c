"""Request bodies of the adapter admin API, apart from its routes.

`PUT /v1/adapters/{name}` may carry credentials for that adapter's source (the operator
reads them from the Secret an Adapter names). They are secrets: held as `SecretStr`, so
no repr, log line or JSON dump of the request shows them, and handed to the adapter
manager only as `SourceCredentials`, which keeps them in memory for later re-fetches and
never reports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from loraplex.runtime.adapters.source import SourceCredentials
from loraplex.runtime.server.lorax_protocol import StrictModel

SECRET_MAX_CHARS = 8192


def _secret(description: str) -> SecretStr | None:
    return Field(None, max_length=SECRET_MAX_CHARS, description=description)


class AdapterCredentials(StrictModel):
    """Secrets for one adapter's fetch; a field left out falls back to the pod's environment."""

    hf_token: SecretStr | None = _secret("Hugging Face token for an hf:// source")
    aws_access_key_id: SecretStr | None = _secret("for an s3:// source")
    aws_secret_access_key: SecretStr | None = _secret("for an s3:// source")
    aws_session_token: SecretStr | None = _secret("temporary AWS credentials only")

    def source_credentials(self) -> SourceCredentials:
        def reveal(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return SourceCredentials(
            hf_token=reveal(self.hf_token),
            aws_access_key_id=reveal(self.aws_access_key_id),
            aws_secret_access_key=reveal(self.aws_secret_access_key),
            aws_session_token=reveal(self.aws_session_token),
        )


class AdapterRegistration(StrictModel):
    source: str = Field(min_length=1, description="local path, file://, hf://org/repo[@rev] "
                        "or s3://bucket/prefix")
    pinned: bool = False
    preload: Literal["host", "device"] | None = None
    credentials: AdapterCredentials | None = Field(
        None, description="used for this adapter's fetches only; never echoed")
