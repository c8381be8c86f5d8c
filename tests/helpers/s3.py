"""An S3 API (moto) on loopback that serves only requests signed with the keys it was given.

moto's own IAM mode refuses valid signatures of listings whose query holds a '/' (it
signs the decoded query string), and every adapter fetch lists a prefix. So the check is
done here, in front of moto: the SigV4 signature is recomputed with botocore over the
request exactly as it was sent (raw path and query), and anything else is answered as S3
does, 403 with `InvalidAccessKeyId` or `SignatureDoesNotMatch`. The payload hash is taken
from the signed `X-Amz-Content-SHA256` header (the body itself is not re-hashed).

    with KeyedS3Server({"AKID": "secret"}) as server:
        boto3.client("s3", endpoint_url=server.url, aws_access_key_id="AKID", ...)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
              '<Message>{message}</Message></Error>')
UNKNOWN_KEY = ("InvalidAccessKeyId",
               "The AWS Access Key Id you provided does not exist in our records.")
BAD_SIGNATURE = ("SignatureDoesNotMatch", "The request signature we calculated does not "
                 "match the signature you provided. Check your key and signing method.")


def _between(text: str, start: str, end: str) -> str:
    return text.partition(start)[2].partition(end)[0]


def _header(environ: Mapping[str, Any], name: str) -> str:
    key = name.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return str(environ.get(key, ""))
    return str(environ.get(f"HTTP_{key}", ""))


def refusal(environ: Mapping[str, Any], keys: Mapping[str, str]) -> tuple[str, str] | None:
    """Why S3 would refuse this request with these key pairs, or None to let it through."""
    authorization = _header(environ, "Authorization")
    key_id = _between(authorization, "Credential=", "/")
    if key_id not in keys:
        return UNKNOWN_KEY
    scope = _between(authorization, "Credential=", ",").split("/")  # id/date/region/s3/...
    signed = _between(authorization, "SignedHeaders=", ",").split(";")
    headers = {name: _header(environ, name) for name in signed}
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or "/"
    request = AWSRequest(method=environ["REQUEST_METHOD"],
                         url=f"http://{_header(environ, 'Host')}{raw_uri}", headers=headers)
    request.context["timestamp"] = headers.get("x-amz-date", "")
    auth = S3SigV4Auth(Credentials(key_id, keys[key_id]), "s3", scope[2])
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)),
                              request)
    return None if _between(authorization, "Signature=", ",") == expected else BAD_SIGNATURE


class KeyedS3Server:
    """moto's S3 on 127.0.0.1 (a free port), behind `refusal`; a context manager."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self.keys = dict(keys)
        backend = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._gate(backend), threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="keyed-s3")
        host, port = self._server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def _gate(self, backend: Callable) -> Callable:
        def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            refused = refusal(environ, self.keys)
            if refused is None:
                return backend(environ, start_response)
            code, message = refused
            start_response("403 Forbidden", [("Content-Type", "application/xml")])
            return [ERROR_BODY.format(code=code, message=message).encode()]
        return app

    def __enter__(self) -> KeyedS3Server:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._thread.join(10)
