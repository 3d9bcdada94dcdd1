"""Storage URIs: which store a URI names, and a URL fit for a log line (its secrets redacted)."""

from __future__ import annotations

import urllib.parse

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
REDACTED = "REDACTED"
SECRET_PARAMS = ("signature", "credential", "token", "secret", "password", "accesskeyid", "apikey", "api_key")
SECRET_PARAM_NAMES = {"sig", "key", "policy", "key-pair-id"}  # Azure SAS, API keys, CloudFront signed URLs


def is_object_store_uri(uri: str) -> bool:
    """True when `uri` has a scheme (`s3://…`, `file://…`): a store's URI, not a plain local path."""
    return "://" in uri


def is_s3_uri(uri: str) -> bool:
    """True for `s3://bucket[/prefix]`."""
    return uri.startswith(S3_SCHEME)


def is_file_uri(uri: str) -> bool:
    """True for `file:///path`."""
    return uri.startswith(FILE_SCHEME)


def file_uri_path(uri: str) -> str:
    """The path of a `file://` URI."""
    return uri[len(FILE_SCHEME):]


def redact_url(url: str) -> str:
    """`url` fit for a log line or an error: the values of query parameters that carry a signature, a
    credential or a token (presigned S3/OBS/OSS/GCS URLs: X-Amz-Signature, X-Amz-Credential,
    X-Amz-Security-Token, Signature, AWSAccessKeyId; Azure SAS `sig`; CloudFront; `token`, `key`…) and a
    password in the URL are replaced by REDACTED; everything else is left as written."""
    parts = urllib.parse.urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}" if at and ":" in userinfo else parts.netloc
    query = "&".join(_redact_field(field) for field in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_field(field: str) -> str:
    """One `name=value` of a query string, its value REDACTED when the name says it is a secret."""
    name = field.partition("=")[0]
    plain = urllib.parse.unquote_plus(name).lower()
    secret = plain in SECRET_PARAM_NAMES or any(word in plain for word in SECRET_PARAMS)
    return f"{name}={REDACTED}" if secret else field
