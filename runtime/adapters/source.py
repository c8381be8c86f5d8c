"""Where an adapter's files come from: a local folder, a Hugging Face repo or an S3 prefix.

A source string is parsed once into a frozen `AdapterSource` with a canonical `uri`
(`/abs/folder`, `hf://org/repo[/subfolder][@revision]`, `s3://bucket/prefix`); the disk
cache keys downloads by that uri. Remote sources fetch exactly two files,
`adapter_config.json` and `adapter_model.safetensors`, into a folder the caller owns:
pickle weights are never downloaded, and keys or file names from a remote listing never
become local paths.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loraplex.runtime.adapters.errors import AdapterError
from loraplex.runtime.adapters.peft_format import ADAPTER_FILES, check_adapter_files

HF_SCHEME = "hf://"
S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class SourceCredentials:
    """Secrets for one adapter's source; unset fields fall back to the environment."""

    hf_token: str | None = field(default=None, repr=False)
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """How long a remote source may keep a download waiting (seconds, per connection)."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0  # silence allowed between bytes
    attempts: int = 2


@dataclass(frozen=True, slots=True)
class AdapterSource:
    kind: str  # "local" | "hf" | "s3"
    uri: str  # canonical, see module docstring
    location: str  # local: folder; hf: repo id; s3: bucket
    path: str = ""  # hf: subfolder; s3: key prefix (no trailing "/")
    revision: str | None = None  # hf only

    @property
    def is_remote(self) -> bool:
        return self.kind != "local"

    def fetch(self, dest: Path, credentials: SourceCredentials | None = None,
              limits: FetchLimits | None = None) -> None:
        """Download the adapter's files into the existing empty folder `dest`."""
        credentials = credentials or SourceCredentials()
        limits = limits or FetchLimits()
        if self.kind == "hf":
            _fetch_hub(self, dest, credentials, limits)
        elif self.kind == "s3":
            _fetch_s3(self, dest, credentials, limits)
        else:
            raise ValueError(f"a local source is read in place, not fetched: {self.uri}")


def parse_source(text: str) -> AdapterSource:
    """Parse a source string; raise `AdapterError(reason="bad_source")` naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise AdapterError("bad_source", "adapter source must be a non-empty string")
    text = text.strip()
    if text.startswith(HF_SCHEME):
        return _parse_hub(text)
    if text.startswith(S3_SCHEME):
        return _parse_s3(text)
    if text.startswith(FILE_SCHEME):
        text = text[len(FILE_SCHEME):]
        if not text.startswith("/"):
            raise AdapterError("bad_source", "file:// sources need an absolute path "
                               "(file:///path/to/adapter)")
    if "://" in text:
        raise AdapterError("bad_source", f"unsupported adapter source {text!r}: use a local "
                           "path, file://, hf://org/repo[@revision] or s3://bucket/prefix")
    folder = os.path.normpath(os.path.abspath(text))
    return AdapterSource(kind="local", uri=folder, location=folder)


def _parse_hub(text: str) -> AdapterSource:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    body, _, revision = text[len(HF_SCHEME):].partition("@")
    segments = [s for s in body.split("/") if s]
    if not segments or any(s in (".", "..") for s in segments):
        raise AdapterError("bad_source", f"invalid hub source {text!r}: expected "
                           "hf://org/repo[/subfolder][@revision]")
    repo_id = "/".join(segments[:2])
    subfolder = "/".join(segments[2:])
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise AdapterError("bad_source", f"invalid hub repo id {repo_id!r}: {error}") from None
    if "@" in text and not revision:
        raise AdapterError("bad_source", f"empty revision after '@' in {text!r}")
    uri = HF_SCHEME + "/".join(segments) + (f"@{revision}" if revision else "")
    return AdapterSource(kind="hf", uri=uri, location=repo_id, path=subfolder,
                         revision=revision or None)


def _parse_s3(text: str) -> AdapterSource:
    bucket, _, prefix = text[len(S3_SCHEME):].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise AdapterError("bad_source", f"invalid S3 bucket name {bucket!r} in {text!r}")
    segments = [s for s in prefix.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise AdapterError("bad_source", f"'.' and '..' are not allowed in S3 prefix {text!r}")
    prefix = "/".join(segments)
    uri = f"{S3_SCHEME}{bucket}/{prefix}" if prefix else f"{S3_SCHEME}{bucket}"
    return AdapterSource(kind="s3", uri=uri, location=bucket, path=prefix)


def _fetch_hub(source: AdapterSource, dest: Path, credentials: SourceCredentials,
               limits: FetchLimits) -> None:
    from huggingface_hub import HfApi, constants, hf_hub_download

    # the file transfer reads its timeout from here (one value for the whole process)
    constants.HF_HUB_DOWNLOAD_TIMEOUT = limits.read_timeout_s
    prefix = f"{source.path}/" if source.path else ""
    try:
        info = HfApi(token=credentials.hf_token).model_info(
            source.location, revision=source.revision,
            timeout=limits.connect_timeout_s + limits.read_timeout_s)
        listed = [s.rfilename[len(prefix):] for s in info.siblings or []
                  if s.rfilename.startswith(prefix) and "/" not in s.rfilename[len(prefix):]]
        check_adapter_files(listed, source.uri)
        with tempfile.TemporaryDirectory(dir=dest) as staging:
            for name in ADAPTER_FILES:
                downloaded = hf_hub_download(
                    source.location, name, subfolder=source.path or None,
                    revision=source.revision, token=credentials.hf_token, local_dir=staging,
                    etag_timeout=limits.read_timeout_s)
                shutil.move(downloaded, dest / name)
    except AdapterError:
        raise
    except Exception as error:  # the hub client raises many kinds, all mean "not fetched"
        raise AdapterError("download_failed",
                           f"cannot fetch {source.uri}: {type(error).__name__}: {error}") from None


def _fetch_s3(source: AdapterSource, dest: Path, credentials: SourceCredentials,
              limits: FetchLimits) -> None:
    import boto3
    from botocore.config import Config

    # boto3 itself honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 and the usual AWS_* keys.
    client = boto3.client(
        "s3",
        aws_access_key_id=credentials.aws_access_key_id,
        aws_secret_access_key=credentials.aws_secret_access_key,
        aws_session_token=credentials.aws_session_token,
        config=Config(connect_timeout=limits.connect_timeout_s,
                      read_timeout=limits.read_timeout_s,
                      retries={"max_attempts": limits.attempts, "mode": "standard"}),
    )
    prefix = f"{source.path}/" if source.path else ""
    try:
        listed: list[str] = []
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=source.location, Prefix=prefix, Delimiter="/")
        for page in pages:
            listed.extend(item["Key"][len(prefix):] for item in page.get("Contents", []))
        check_adapter_files(listed, source.uri)
        for name in ADAPTER_FILES:
            client.download_file(source.location, prefix + name, str(dest / name))
    except AdapterError:
        raise
    except Exception as error:  # botocore's ClientError, NoCredentialsError, connection errors
        raise AdapterError("download_failed",
                           f"cannot fetch {source.uri}: {type(error).__name__}: {error}") from None
