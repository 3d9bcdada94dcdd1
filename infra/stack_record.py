"""The record a running local stack keeps in its home (`stack.json`: API URL, work pool), and how `make run`
finds that stack through it. `infra.stack` writes it and `infra.run_local` reads it: neither imports the other."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

RECORD = "stack.json"


def api_healthy(api_url: str) -> bool:
    """Whether the Prefect API at `api_url` answers its health check (within 2 s)."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def write_record(home: Path, api_url: str, pool: str) -> None:
    """Record the stack whose PREFECT_HOME is `home`: its API URL and work pool."""
    (home / RECORD).write_text(json.dumps({"api_url": api_url, "pool": pool}) + "\n")


def recorded_port(home: Path) -> int | None:
    """The port of the stack recorded in `home` (its API URL's), None without a readable record."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(json.loads((home / RECORD).read_text())["api_url"]).port
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_stack_api(home: Path) -> str | None:
    """The API URL recorded in `home` if that stack answers, else None (no record, or it is down)."""
    record = home / RECORD
    if not record.exists():
        return None
    api = json.loads(record.read_text())["api_url"]
    return api if api_healthy(api) else None
