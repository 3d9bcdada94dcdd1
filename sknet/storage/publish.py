"""Publishing a set of files atomically: upload everything, verify every object, write `manifest.json` last."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from sknet.storage.base import (
    MANIFEST,
    PermanentStorageError,
    StorageError,
    Store,
    WriteConflict,
    join,
    sha256_file,
)
from sknet.storage.claims import Claim, claim, clear_published_claim, drop, renew

log = logging.getLogger(__name__)


def publish(store: Store, prefix: str, files: Mapping[str, Path], metadata: Mapping | None = None,
            progress: Callable[[str], None] | None = None, file_facts: Mapping[str, dict] | None = None,
            *, exclusive: bool = False, holder: str | None = None) -> dict:
    """Upload `files` (key under prefix → local path), verify each object, then write the manifest.

    Each manifest entry holds size and sha256, plus any `file_facts[name]` (e.g. a record count); a
    sha256 already in the facts is not computed again, and the verification below checks it anyway.

    With `exclusive`, the prefix is claimed first (`claim`, recording `holder`: the flow run publishing it)
    and the manifest only created if there is none, so two executions publishing one prefix never mix their
    objects and manifests: the one that comes second gets `WriteConflict` and has written nothing over the
    other's objects. A prefix already published is refused the same way, and a claim left beside its
    manifest is removed (`clear_published_claim`).

    Once the manifest is written, multipart uploads that earlier, cut-off attempts left open under the
    prefix are aborted, and the claim is removed (both best effort: a failure is a warning, the
    publication is complete).
    """
    if exclusive and clear_published_claim(store, prefix):
        raise WriteConflict(f"{store.uri}/{prefix}: already published by another execution")
    hold = claim(store, prefix, holder) if exclusive else None
    try:
        if hold and store.exists(join(prefix, MANIFEST)):
            raise WriteConflict(f"{store.uri}/{prefix}: already published by another execution")
        entries = _upload(store, prefix, files, file_facts or {}, progress, hold)
        for name, entry in entries.items():
            try:
                store.verify(join(prefix, name), entry["size"], entry["sha256"], local=Path(files[name]))
            except StorageError as exc:
                _refuse_changed_source(Path(files[name]), name, entry, exc)
                raise
        manifest = {"files": entries, **(metadata or {})}
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        if hold:
            renew(hold)
            store.put_bytes_if(body, join(prefix, MANIFEST), None)
        else:
            store.put_bytes(body, join(prefix, MANIFEST))
        _abort_incomplete_uploads(store, prefix)
        return manifest
    finally:
        if hold:
            drop(hold)


def _refuse_changed_source(path: Path, name: str, entry: Mapping, failure: StorageError) -> None:
    """After an object failed its check: `PermanentStorageError` when the local file itself is no longer what was
    hashed (changed since it was exported and scored: a retry would upload it again, as wrong); else return, and
    the failure stands as the transient one it may be (the bytes changed in transit or at rest)."""
    if not path.is_file() or path.stat().st_size != entry["size"] or sha256_file(path) != entry["sha256"]:
        raise PermanentStorageError(
            f"{path} changed after it was hashed (its release entry {name} records {entry['size']:,} bytes, sha256 "
            f"{entry['sha256'][:12]}…): what was exported and scored is not what would be released; not retried "
            f"({failure})") from None


def _abort_incomplete_uploads(store: Store, prefix: str) -> None:
    """After a publication: leftovers of earlier, cut-off uploads under `prefix` go (best effort)."""
    try:
        if aborted := store.abort_incomplete_uploads(prefix):
            log.info("aborted %d incomplete multipart upload(s) under %s/%s", aborted, store.uri, prefix)
    except StorageError as exc:
        log.warning("%s; incomplete multipart uploads under %s/%s may remain", exc, store.uri, prefix)


def _upload(store: Store, prefix: str, files: Mapping[str, Path], file_facts: Mapping[str, dict],
            progress: Callable[[str], None] | None, hold: Claim | None) -> dict:
    """Put every file (renewing the claim after each) and return the manifest's file table."""
    entries = {}
    for name, path in sorted(files.items()):
        path = Path(path)
        facts = file_facts.get(name, {})
        entries[name] = {**facts, "size": path.stat().st_size, "sha256": facts.get("sha256") or sha256_file(path)}
        store.put(path, join(prefix, name))
        if hold:
            renew(hold)
        if progress:
            progress(f"uploaded {name} ({entries[name]['size']:,} bytes)")
    return entries

