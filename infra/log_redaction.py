"""A logging filter that keeps URLs' secrets out of a Prefect server's log: every URL in a record's message,
traceback and stack is written as `scheme://host[:port]`, its user info dropped and its path, query and fragment
replaced by `/***`.

A webhook URL is a credential (Slack's and Teams' carry their token in the path), and when the failure webhook
answers an error the Prefect server logs the whole URL in each attempt's traceback (`httpx.HTTPStatusError: …
for url 'https://hooks.slack.com/services/…'`); a database URL carries its password. Paths of the server's own
API in uvicorn's access log have no scheme and are kept.

Wired by `infra/server-logging.yml` (`filters: {redact_urls: {"()": infra.log_redaction.RedactUrls}}` on every
handler). Standard library only, so a cluster's Prefect server can use it without sknet installed (README).
"""

from __future__ import annotations

import logging
import re

URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)(?:[^\s/?#@'\"<>]*@)?([^\s/?#'\"<>]*)([^\s'\"<>]*)")
HIDDEN = "/***"


def redact_urls(text: str) -> str:
    """`text` with each URL cut to `scheme://host[:port]` (+ `/***` where a path, query or fragment was)."""
    return URL.sub(lambda m: m.group(1) + m.group(2) + (HIDDEN if m.group(3) else ""), text)


class RedactUrls(logging.Filter):
    """Rewrites a record's message (arguments merged in), exception text and stack with `redact_urls`; drops
    nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format: keep the format string alone
            message = str(record.msg)
        record.msg, record.args = redact_urls(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_urls(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_urls(record.stack_info)
        return True
