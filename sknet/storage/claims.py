"""Claims: `<prefix>/.writing` names who is publishing a prefix right now, with a lease that a killed writer's claim
expires by."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sknet.storage.base import MANIFEST, StorageError, Store, Versioned, WriteConflict, join

CLAIM = ".writing"  # `<prefix>/.writing`: who is publishing the prefix right now (see `claim`)
CLAIM_LEASE = timedelta(minutes=15)  # a claim not renewed for this long is abandoned; renewed after each file

log = logging.getLogger(__name__)


@dataclass
class Claim:
    """This writer's hold on `<prefix>/.writing`: its record (owner, host, pid, times) and version tag."""

    store: Store
    key: str
    record: dict
    tag: str


def claim(store: Store, prefix: str, holder: str | None = None) -> Claim:
    """Take `<prefix>/.writing` for this writer, so that no other execution publishes the same prefix.

    The claim records `holder` (the flow run publishing, if any), host, pid and the prefix (the version).
    A claim of another writer renewed within CLAIM_LEASE is refused with `WriteConflict` naming its holder.
    Taken over are: a claim of the same `holder` at once (an earlier attempt of this very flow run, killed
    before it removed its claim: its retry must not wait for the lease), and any claim not renewed for
    CLAIM_LEASE (abandoned). Writers' clocks are compared, so hosts need synchronised clocks (NTP) to
    within a fraction of the lease.
    """
    key = join(prefix, CLAIM)
    now = _utc_now()
    record = {"owner": uuid.uuid4().hex, "holder": holder, "prefix": prefix, "host": socket.gethostname(),
              "pid": os.getpid(), "started_at": now, "renewed_at": now}
    held = store.get_versioned(key)
    previous = _claim_record(held)
    ours = holder is not None and previous.get("holder") == holder
    if held is not None and not ours and not _abandoned(previous):
        raise WriteConflict(f"{store.uri}/{prefix} is being written by another execution ({_describe(previous)}); "
                            f"wait for it, or delete {store.uri}/{key} if that process is gone "
                            f"(a claim not renewed for {CLAIM_LEASE} is taken over)")
    if held is not None:
        log.info("taking over the claim %s/%s of %s (%s)", store.uri, key,
                 "an earlier attempt of this flow run" if ours else "an abandoned writer", _describe(previous))
    body = json.dumps(record, sort_keys=True).encode()
    try:
        tag = store.put_bytes_if(body, key, held.tag if held else None)
    except WriteConflict:
        again = store.get_versioned(key)  # a retried request may have landed: then the claim is ours
        if again is None or _claim_record(again).get("owner") != record["owner"]:
            raise WriteConflict(f"{store.uri}/{prefix}: another execution claimed it at the same moment") from None
        tag = again.tag
    return Claim(store, key, record, tag)


def renew(hold: Claim) -> None:
    """Show that the claim's writer is alive; `WriteConflict` if another execution took the claim over."""
    hold.record["renewed_at"] = _utc_now()
    try:
        hold.tag = hold.store.put_bytes_if(json.dumps(hold.record, sort_keys=True).encode(), hold.key, hold.tag)
    except WriteConflict:
        raise WriteConflict(f"{hold.store.uri}/{hold.key}: this execution's claim was taken over (not renewed "
                            f"within {CLAIM_LEASE}); stopping before the manifest") from None


def drop(hold: Claim) -> None:
    """Remove the claim if it is still this writer's; failing to is a warning, never the publication's failure.

    A claim left behind blocks nobody for long: before the manifest, a retry of the same holder takes it over
    at once (anyone else after CLAIM_LEASE); beside the manifest, the next publication or promotion of the
    prefix removes it (`clear_published_claim`).
    """
    try:
        held = hold.store.get_versioned(hold.key)
        if held is not None and held.tag == hold.tag:
            hold.store.delete(hold.key)
    except StorageError as exc:
        log.warning("could not remove the claim %s/%s (%s); it is left behind, for a retry of the same flow run "
                    "to take over or, once the manifest exists, the next publication or promotion to remove",
                    hold.store.uri, hold.key, exc)


def clear_published_claim(store: Store, prefix: str) -> bool:
    """True if `prefix` is published (has its manifest). A claim still beside the manifest was left by a writer
    stopped between the two; no writer needs it any more, so it is removed (failing to: a warning)."""
    if not store.exists(join(prefix, MANIFEST)):
        return False
    key = join(prefix, CLAIM)
    try:
        if (held := store.get_versioned(key)) is not None:
            store.delete(key)
            log.info("removed the claim %s/%s of %s, left beside the manifest: the publication is complete",
                     store.uri, key, _describe(_claim_record(held)))
    except StorageError as exc:
        log.warning("could not remove the claim %s/%s left beside the manifest (%s); the publication is complete",
                    store.uri, key, exc)
    return True


def _claim_record(held: Versioned | None) -> dict:
    try:
        record = json.loads(held.data) if held else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _abandoned(record: Mapping) -> bool:
    """A claim not renewed within the lease (or unreadable) belongs to no live writer."""
    try:
        return datetime.now(UTC) - datetime.fromisoformat(record["renewed_at"]) > CLAIM_LEASE
    except (KeyError, TypeError, ValueError):
        return True


def _describe(record: Mapping) -> str:
    run = f"flow run {record['holder']}, " if record.get("holder") else ""
    return (f"{run}host {record.get('host', '?')} pid {record.get('pid', '?')}, "
            f"started {record.get('started_at', '?')}, renewed {record.get('renewed_at', '?')}")


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")

