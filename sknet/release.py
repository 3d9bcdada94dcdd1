"""Publishing a run's outputs and a release, with the `LATEST` pointer moved last.

Layout in the store: `runs/<run id>/…` (always, for diagnosis), `releases/<model>/<version>/…` (only
after the gate passed) and `releases/<model>/LATEST`, rewritten only once every release object was
uploaded and verified and the release manifest written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from sknet.storage import MANIFEST, IncompleteError, Store, join, publish, read_manifest, sha256_file

LATEST = "LATEST"
LINEAGE = "lineage.json"

log = logging.getLogger(__name__)


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


def release_prefix(model: str, version: str | None = None) -> str:
    return f"releases/{model}" + (f"/{version}" if version else "")


def publish_run(store: Store, run_id: str, files: Mapping[str, Path], metadata: Mapping | None = None) -> dict:
    return publish(store, run_prefix(run_id), files, metadata=metadata, progress=log.info)


def publish_release(store: Store, model: str, version: str, files: Mapping[str, Path],
                    metadata: Mapping | None = None) -> dict:
    """Publish the release (manifest last), then point `LATEST` at it. Returns the pointer written.

    Publishing the same files again (a retried task or flow run) only rewrites `LATEST`; other files
    under an existing version are refused. `lineage.json` is not compared: a retry writes a new one
    (its `created_at` differs) and the stored one stays.
    """
    prefix = release_prefix(model, version)
    if store.exists(join(prefix, MANIFEST)):
        manifest = read_manifest(store, prefix)
        stored = {name: entry["sha256"] for name, entry in manifest["files"].items() if name != LINEAGE}
        if stored != {name: sha256_file(Path(path)) for name, path in files.items() if name != LINEAGE}:
            raise IncompleteError(f"{store.uri}/{prefix} is already released with other files; versions are immutable")
    else:
        manifest = publish(store, prefix, files, metadata=metadata, progress=log.info)
    pointer = {"version": version, "uri": f"{store.uri}/{prefix}", "metrics": manifest.get("metrics", {})}
    store.put_bytes(json.dumps(pointer, indent=2, sort_keys=True).encode(), join(release_prefix(model), LATEST))
    return pointer


def latest_release(store: Store, model: str) -> dict | None:
    """The current release's manifest (with its metrics), or None before the first release."""
    key = join(release_prefix(model), LATEST)
    if not store.exists(key):
        return None
    pointer = json.loads(store.get_bytes(key))
    return read_manifest(store, release_prefix(model, pointer["version"]))
