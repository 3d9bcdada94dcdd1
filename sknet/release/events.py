"""The Prefect events a move of LATEST sends, so an automation can act on it (sknet never imports Prefect).

`sknet.release.published`: a release moved LATEST (the flow's publish task sends it, confirmed, with
`tasks._support.send_confirmed`: the one sender of our flows and tasks); `sknet.release.promoted`: `sknet release
promote` moved it (`send_event` posts it to the Prefect API's REST `POST /events`,
`prefect/server/api/events.py:create_events`: sknet never imports Prefect, so the command has a sender of its own).
- resource: the model; `prefect.resource.id` is its store URI, `<store>/releases/<model>` (user info and
  signatures redacted), with `prefect.resource.name` and `sknet.model` its name;
- related: the flow run that trained the version (`prefect.flow-run.<id>`, role `flow-run`) and its dataset
  (the dataset URI as `sknet.dataset.staged` names it, role `dataset`), where the release recorded them;
- payload: from, to, sequence, why, when, metrics, run_url and the version's uri.
The event id derives from the move's record id: an event sent again (a retried task) is recorded once.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping

from sknet.jsonio import json_safe
from sknet.release.history import record_of, safe_url
from sknet.storage import redact_url

PUBLISHED = "sknet.release.published"
PROMOTED = "sknet.release.promoted"
EVENT_TIMEOUT_SECONDS = 10.0


def model_resource(store_uri: str, model: str) -> dict[str, str]:
    """The event's resource: the model, identified by its store URI (one model name may live in several stores)."""
    return {"prefect.resource.id": f"{redact_url(store_uri)}/releases/{model}", "prefect.resource.name": model,
            "sknet.model": model}


def release_event(store_uri: str, model: str, pointer: Mapping) -> dict:
    """The event for the move that wrote LATEST `pointer`: `PROMOTED` for a promotion, else `PUBLISHED`; keyword
    arguments of Prefect's `emit_event` (`id` as a string)."""
    resource = model_resource(store_uri, model)
    record = record_of(pointer) or {"id": f"{pointer['version']}-{pointer.get('sequence')}", "to": pointer["version"],
                                    "sequence": pointer.get("sequence"), "metrics": pointer.get("metrics", {})}
    payload = {"from": record.get("from"), "to": record["to"], "sequence": record["sequence"],
               "why": record.get("why"), "when": record.get("when"), "metrics": record.get("metrics", {}),
               "run_url": safe_url(record.get("run_url")), "uri": safe_url(pointer.get("uri"))}
    return {"event": PROMOTED if record.get("action") == "promoted" else PUBLISHED, "resource": resource,
            "related": _related(record), "payload": json_safe(payload),
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{resource['prefect.resource.id']}#{record['id']}"))}


def _related(record: Mapping) -> list[dict[str, str]]:
    """The flow run and the dataset of the release a move points at, where its manifest recorded them."""
    related = []
    try:
        related.append({"prefect.resource.id": f"prefect.flow-run.{uuid.UUID(str(record.get('flow_run_id')))}",
                        "prefect.resource.role": "flow-run"})
    except ValueError:
        pass  # released outside a flow run (`sknet` by hand), or before runs were recorded
    dataset = record.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("uri"), str):
        related.append({"prefect.resource.id": redact_url(dataset["uri"]), "prefect.resource.role": "dataset",
                        "sknet.dataset.digest": str(dataset.get("digest", ""))})
    return related


def send_event(event: Mapping, occurred: str, environ: Mapping[str, str] = os.environ) -> dict:
    """POST `event` (occurred at `occurred`, ISO 8601) to `$PREFECT_API_URL/events`, with `PREFECT_API_AUTH_STRING`
    (Basic; else user info in the URL, as httpx reads it) or `PREFECT_API_KEY` (Bearer), as the Prefect client
    sends them. Never raises: returns {"event", "id", "sent", "detail"}; without PREFECT_API_URL nothing is sent,
    and the detail says so. The detail names the API with its secrets redacted, never a credential."""
    status = {"event": event["event"], "id": event["id"], "sent": False}
    api = environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if not api:
        return {**status, "detail": "no Prefect API configured (PREFECT_API_URL is not set): event not sent"}
    url, headers = _endpoint(api, environ)
    request = urllib.request.Request(url, method="POST", headers=headers,
                                     data=json.dumps([{**event, "occurred": occurred}]).encode())
    try:
        with urllib.request.urlopen(request, timeout=EVENT_TIMEOUT_SECONDS, context=_tls(environ)):
            return {**status, "sent": True, "detail": f"received by {redact_url(api)}/events"}
    except urllib.error.HTTPError as exc:
        problem = f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:  # the reason's words only: its text may quote the URL
        problem = f"{type(exc.reason).__name__}: {getattr(exc.reason, 'strerror', None) or 'unreachable'}"
    except (OSError, ValueError) as exc:  # a timeout, a URL that is not http(s)
        problem = type(exc).__name__
    return {**status, "detail": f"not received by {redact_url(api)}/events ({problem})"}


def _endpoint(api: str, environ: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """The events URL (without user info) and the request's headers."""
    parts = urllib.parse.urlsplit(api)
    auth = environ.get("PREFECT_API_AUTH_STRING")
    if parts.username is not None:
        auth = auth or f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    elif key := environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {key}"
    return urllib.parse.urlunsplit(parts) + "/events", headers


def _tls(environ: Mapping[str, str]) -> ssl.SSLContext | None:
    """PREFECT_API_SSL_CERT_FILE's CA bundle when set (as the Prefect client reads it), else the default."""
    cafile = environ.get("PREFECT_API_SSL_CERT_FILE")
    return ssl.create_default_context(cafile=cafile) if cafile else None
