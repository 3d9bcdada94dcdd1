"""Publishing a run's outputs and a release, with the `LATEST` pointer moved last and only forwards.

Layout in the store: `runs/<run id>/…` (always, for diagnosis), `releases/<model>/<version>/…` (only
after the gate passed) and `releases/<model>/LATEST`, rewritten only once every release object was
uploaded and verified and the release manifest written.

LATEST holds `{"version", "uri", "metrics", "released_at", "sequence"}`; `sequence` counts its moves (1 for
the first release). It moves by compare-and-swap against the LATEST just read (`move_latest`), so two
releases racing never overwrite a pointer neither has judged. `promote` re-points it to any complete
version, backwards too (a rollback), and adds `promoted_at`; `list_releases` lists the versions.

Each move also records itself: LATEST carries the record of the move that wrote it (`move`: from, to, why,
when, metrics, run URL), so the compare-and-swap that moves LATEST is the write that records the move, and the
records of earlier moves are kept in `release-history/<model>/` (`sknet.release.history`); `history` reads
the trail back from LATEST.

Run ids, versions and model names are each one path segment (`check_segment`): checked where they enter (the
flow's parameters through `sknet.plan.plan_run`, the CLI, this module's functions) and in a LATEST read back,
so no name reaches outside its directory.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sknet.errors import ConfigError, SknetError
from sknet.release.gate import gate
from sknet.release.history import clean_reason, keep_own_record, keep_record, move_record, promotion_why, trail, who
from sknet.storage import (
    MANIFEST,
    IncompleteError,
    PermanentStorageError,
    Store,
    Versioned,
    WriteConflict,
    clear_published_claim,
    join,
    publish,
    read_manifest,
    sha256_file,
)

LATEST = "LATEST"
LINEAGE = "lineage.json"
MODEL_CARD = "MODEL_CARD.md"
REWRITTEN = (LINEAGE, MODEL_CARD)  # written anew by each attempt of a release; a published version keeps its own
LATEST_ATTEMPTS = 5  # reads and conditional writes of LATEST before giving up to other releases
# a run id, version or model name: one path segment (not . or ..), at most 128 characters: it becomes file and
# object names with prefixes and suffixes added (`.partial-…`, `<sequence>-<id>.json`) under the 255-byte limit
SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
SEGMENT_RULE = ("one path segment: letters, digits, '.', '_' or '-' ([A-Za-z0-9._-]+), not '.' or '..', at most 128 "
                "characters")

log = logging.getLogger(__name__)
__all__ = [
    "LATEST", "LATEST_ATTEMPTS", "LINEAGE", "MODEL_CARD", "REWRITTEN", "SEGMENT", "SEGMENT_RULE", "BeatLatest",
    "LatestNotMoved", "check_segment", "content_damage", "history", "latest_release", "list_releases", "move_latest",
    "promote", "publish_release", "publish_run", "release_prefix", "run_prefix",
]


class LatestNotMoved(SknetError):
    """The release is published, but LATEST stays where it is: the release is older, or not better."""


@dataclass(frozen=True)
class BeatLatest:
    """gate.compare_to_latest, judged again when LATEST moves: `metric` ≥ LATEST's + `margin`; except against
    `judged`, a version the gate compared this model with sample by sample (`sknet.release.champion`): that verdict
    stands."""

    metric: str
    margin: float = 0.0
    judged: str | None = None


def check_segment(what: str, value: object, error: type[Exception] = ConfigError) -> str:
    """`value` if it is one path segment (SEGMENT, not `.` or `..`), else `error` naming `what`, the value and
    the rule: a run id, version or model name never reaches outside its directory."""
    if not isinstance(value, str) or not SEGMENT.fullmatch(value) or value in (".", ".."):
        raise error(f"{what} {value!r}: expected {SEGMENT_RULE}")
    return value


def run_prefix(run_id: str) -> str:
    return f"runs/{run_id}"


def release_prefix(model: str, version: str | None = None) -> str:
    return f"releases/{model}" + (f"/{version}" if version else "")


def publish_run(store: Store, run_id: str, files: Mapping[str, Path], metadata: Mapping | None = None) -> dict:
    check_segment("run id", run_id)
    return publish(store, run_prefix(run_id), files, metadata=metadata, progress=log.info)


def publish_release(store: Store, model: str, version: str, files: Mapping[str, Path],
                    metadata: Mapping | None = None, *, beat_latest: BeatLatest | None = None,
                    against_latest: Callable[[dict | None], Mapping[str, Path]] | None = None,
                    file_facts: Mapping[str, dict] | None = None, holder: str | None = None,
                    why: str | None = None) -> dict:
    """Publish the release (manifest last, `released_at` in it), then move `LATEST` (`move_latest`, recording `why`).

    Returns the pointer LATEST holds. With `beat_latest`, a model that does not beat LATEST as it is
    now is refused before anything is uploaded (`LatestNotMoved`). `against_latest(pointer)` writes files
    that compare the release with LATEST as read before the upload (None before the first release), such
    as its model card; they join `files`. LATEST is read once for both, and `against_latest` is not called
    when LATEST already points at `version` (a retry after the move: the release is complete).

    `file_facts` go into the manifest entries (see `sknet.storage.publish`): a sha256 known already is not
    computed again, and the uploaded object is still checked against it.

    Publishing the same files again (a retried task or flow run) uploads nothing; other files under an
    existing version are refused, and so is a version another execution is writing right now
    (`WriteConflict`, see `sknet.storage.claim`), unless its claim is `holder`'s: the flow run publishing,
    whose retry takes over the claim an attempt killed mid-way left. A claim left beside the manifest (a
    kill after it) is removed. `REWRITTEN` files are not compared: a retry writes new ones (lineage's
    `created_at`, the card's LATEST may differ) and the stored ones stay.
    """
    check_segment("model", model)
    check_segment("version", version)
    metadata = {**(metadata or {}), "released_at": datetime.now(UTC).isoformat()}
    current = _read_latest(store, model)[1] if beat_latest or against_latest else None
    _refuse_before_upload(store, model, version, metadata, beat_latest, current)
    if against_latest and not (current and current["version"] == version):
        files = {**files, **against_latest(current)}
    manifest = _publish_version(store, release_prefix(model, version), files, metadata, file_facts, holder)
    return move_latest(store, model, version, manifest, beat_latest=beat_latest, why=why)


def _refuse_before_upload(store: Store, model: str, version: str, metadata: Mapping,
                          beat_latest: BeatLatest | None, current: Mapping | None) -> None:
    """With `beat_latest`, a new version that does not beat LATEST (`current`, as just read) is refused before any
    upload."""
    if beat_latest is None or store.exists(join(release_prefix(model, version), MANIFEST)):
        return  # a published version is judged by `move_latest` alone
    if current and current["version"] != version:
        _refuse_backwards(f"{store.uri}/{release_prefix(model, version)} is not published and LATEST stays at "
                          f"{current['version']}", version, metadata, current, beat_latest)


def _publish_version(store: Store, prefix: str, files: Mapping[str, Path], metadata: Mapping,
                     file_facts: Mapping[str, dict] | None, holder: str | None) -> dict:
    """The version's manifest: published now by this execution, or the stored one if its files are these
    (then a claim a killed attempt left beside it goes)."""
    if not clear_published_claim(store, prefix):
        try:
            return publish(store, prefix, files, metadata=metadata, progress=log.info, file_facts=file_facts,
                           exclusive=True, holder=holder)
        except WriteConflict:
            if not store.exists(join(prefix, MANIFEST)):
                raise  # another execution is still writing this version
    manifest = read_manifest(store, prefix)
    stored = {name: entry["sha256"] for name, entry in manifest["files"].items() if name not in REWRITTEN}
    if stored != {name: sha256_file(Path(path)) for name, path in files.items() if name not in REWRITTEN}:
        raise IncompleteError(f"{store.uri}/{prefix} is already released with other files; versions are immutable")
    return manifest


def move_latest(store: Store, model: str, version: str, manifest: Mapping, *,
                beat_latest: BeatLatest | None = None, why: str | None = None) -> dict:
    """Point LATEST at the complete release `version` (its `manifest`) unless that moves it backwards.

    LATEST is read right before the write, and written only if it is still what was read (else it is
    read and judged again). The release may not replace LATEST's when
    - it is older: its `released_at` (UTC, when its publication began; in its manifest) is earlier than
      LATEST's. Publication time orders releases, not version names (flow-run ids). This is the retried or
      late run of a release another one has superseded; a release or LATEST without `released_at`
      (written before it was recorded) counts as older than any with one;
    - with `beat_latest` (gate.compare_to_latest): its metric is below LATEST's + margin *now*. The gate
      task compared with LATEST earlier, and its result is cached; LATEST may have moved since.
    Then the version stays published (versions are immutable), LATEST stays, and `LatestNotMoved` names
    both versions. LATEST already at `version` is returned as it is (a retry after the move).

    The pointer carries the move's record (`why`, default "released by run <the manifest's flow_run_id or
    version>"); the record of the LATEST it replaces is kept in the trail first (`sknet.release.history`).
    """
    why = why or f"released by run {manifest.get('flow_run_id') or version}"

    def released(current: dict | None) -> dict | None:
        if current and current["version"] == version:
            return None  # a retry after the move: LATEST is already this release
        if current:
            _refuse_backwards(f"{store.uri}/{release_prefix(model, version)} is published, but LATEST stays at "
                              f"{current['version']}", version, manifest, current, beat_latest)
        return _pointer(store, model, version, manifest, current, why=why, action="released")

    return _swap_latest(store, model, version, released, doing="releasing")[0]


def _swap_latest(store: Store, model: str, version: str, next_pointer, *, doing: str,
                 replacing: bool = False) -> tuple[dict, dict | None]:
    """The one compare-and-swap of LATEST, for a release and a promotion alike: read LATEST, ask `next_pointer`
    (given the current pointer) what to write — None: leave it as it is —, keep the current one's record in the
    trail, and write only if LATEST is still what was read; a lost race reads and asks again. Returns (the
    pointer LATEST holds now, the one it replaced); `WriteConflict` after LATEST_ATTEMPTS lost races."""
    key = join(release_prefix(model), LATEST)
    for _ in range(LATEST_ATTEMPTS):
        held, current = _read_latest(store, model, replacing=replacing)
        pointer = next_pointer(current)
        if pointer is None:
            return current, current
        keep_record(store, model, current)  # before LATEST leaves it, its record is in the trail
        try:
            store.put_bytes_if(json.dumps(pointer, indent=2, sort_keys=True).encode(), key, held.tag if held else None)
        except WriteConflict:
            log.info("LATEST of %s moved while %s %s; judging again", model, doing, version)
            continue
        keep_own_record(store, model, pointer, log)
        log.info("LATEST of %s: %s → %s (%s, move %d)", model, current["version"] if current else "none", version,
                 doing, pointer["sequence"])
        return pointer, current
    raise WriteConflict(f"{store.uri}/{key}: other releases moved it {LATEST_ATTEMPTS} times while {doing} "
                        f"{version}; retry")


def _pointer(store: Store, model: str, version: str, manifest: Mapping, current: Mapping | None, *, why: str,
             **facts: object) -> dict:
    """What LATEST holds once it points at `version` (its `manifest`), replacing `current`: with the record of
    this move (`why`, `facts`, and the run URL, flow run and dataset the manifest recorded)."""
    sequence = (current or {}).get("sequence", 0) + 1
    metrics = manifest.get("metrics", {})
    return {"version": version, "uri": f"{store.uri}/{release_prefix(model, version)}", "metrics": metrics,
            "released_at": manifest.get("released_at", ""), "sequence": sequence,
            "move": move_record(current, version, sequence, why=why, metrics=metrics, run_url=manifest.get("run_url"),
                                flow_run_id=manifest.get("flow_run_id"), dataset=manifest.get("dataset"), **facts)}


def _read_latest(store: Store, model: str, *, replacing: bool = False) -> tuple[Versioned | None, dict | None]:
    """LATEST as stored (for a conditional write) and as a pointer; (None, None) before the first release.

    Every reader of LATEST comes here. A LATEST that is not a pointer (`_pointer_of`) is refused, never followed
    (`PermanentStorageError` naming the object, what is wrong and the repair), unless it is being replaced
    (`replacing`: a promotion, the repair): then it reads as an empty pointer, with a warning.
    """
    key = join(release_prefix(model), LATEST)
    held = store.get_versioned(key)
    if held is None:
        return None, None
    try:
        return held, _pointer_of(held.data)
    except ValueError as exc:
        if not replacing:
            raise PermanentStorageError(
                f"{store.uri}/{key}: {exc}; LATEST is not followed: point it at a complete version with `sknet "
                f"release promote` (--model {model} --version V; `sknet release ls` lists them), which replaces a "
                "malformed LATEST: that is the repair") from None
        log.warning("%s/%s: %s; the promotion replaces it", store.uri, key, exc)
        return held, {}


def _pointer_of(data: bytes) -> dict:
    """A stored LATEST as a pointer; ValueError saying what is wrong unless it is a JSON object whose version is
    one path segment, whose `sequence` (if any) counts moves and whose `metrics` (if any) are an object."""
    try:
        pointer = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(pointer, dict):
        raise ValueError(f"not a JSON object but {data[:80]!r}")
    check_segment("version", pointer.get("version"), ValueError)
    sequence = pointer.get("sequence", 1)
    if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 1:
        raise ValueError(f"sequence {sequence!r}: expected a whole number ≥ 1 (the count of LATEST's moves)")
    if not isinstance(pointer.get("metrics", {}), dict):
        raise ValueError(f"metrics {pointer['metrics']!r:.80}: expected a JSON object of metric names and values")
    return pointer


def _refuse_backwards(where: str, version: str, release: Mapping, current: Mapping,
                      beat_latest: BeatLatest | None) -> None:
    """`LatestNotMoved` (message: `where`, then why) if `release` (manifest or metadata) may not replace LATEST."""
    if _released_at(release) < max(_released_at(current), _released_at(current, "promoted_at")):
        promoted = f", promoted {current['promoted_at']}" if current.get("promoted_at") else ""
        raise LatestNotMoved(
            f"{where}: {version} (released {release.get('released_at') or 'at an unrecorded time'}) is older "
            f"than {current['version']} (released {current.get('released_at')}{promoted}); LATEST never moves back")
    if beat_latest is not None and current.get("version") != beat_latest.judged:
        verdict = gate(release.get("metrics", {}), metric=beat_latest.metric, threshold=0.0,
                       champion_metrics=current.get("metrics", {}), margin=beat_latest.margin)
        if not verdict.passed:
            raise LatestNotMoved(f"{where}: compared at release time, {verdict.message.removeprefix('gate failed: ')}")


def _released_at(record: Mapping, field: str = "released_at") -> datetime:
    """When a release's publication began (or `field`: another time); the earliest time without a (readable) one."""
    try:
        moment = datetime.fromisoformat(record[field])
    except (KeyError, TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_release(store: Store, model: str) -> dict | None:
    """The current release's manifest (with its metrics) and its `version`, or None before the first release."""
    pointer = _read_latest(store, check_segment("model", model))[1]
    if not pointer:
        return None
    return {**read_manifest(store, release_prefix(model, pointer["version"])), "version": pointer["version"]}


def list_releases(store: Store, model: str | None = None, *, verify: bool = False) -> dict[str, dict]:
    """Each model's releases (or only `model`'s): {model: {"latest": version | None, "versions": [...]}}.

    Versions come oldest first (by `released_at`), each with its uri, metrics, released_at, whether LATEST
    points at it, and `complete`: False for a publication that never finished (no manifest) and for one
    whose objects are not all there at the sizes its manifest records (`damaged`: file → what is wrong).
    One listing of the model's objects gives the sizes; nothing is downloaded but the manifests. With `verify`,
    each version that is complete by size is also checked by content (`content_damage`: a file changed in place
    at the same size is `damaged` too).
    """
    if model:
        models = [check_segment("model", model)]
    else:
        models = sorted({o.key.split("/")[1] for o in store.list("releases/") if o.key.count("/") >= 2})
    return {name: _model_releases(store, name, verify) for name in models}


def _model_releases(store: Store, model: str, verify: bool = False) -> dict:
    """One model's listing (see `list_releases`); a LATEST that cannot be followed is reported as `latest_error`."""
    try:
        latest, malformed = _read_latest(store, model)[1], {}
    except PermanentStorageError as exc:
        latest, malformed = None, {"latest_error": str(exc)}
    base = release_prefix(model) + "/"
    sizes = {o.key.removeprefix(base): o.size for o in store.list(base)}  # <version>/<file> → bytes
    versions = []
    for version in sorted({key.split("/")[0] for key in sizes if "/" in key}):
        manifest = read_manifest(store, release_prefix(model, version)) if f"{version}/{MANIFEST}" in sizes else {}
        damaged = _damaged(manifest, {key.removeprefix(f"{version}/"): size for key, size in sizes.items()
                                      if key.startswith(f"{version}/")}) if manifest else {}
        if verify and manifest and not damaged:
            damaged = content_damage(store, release_prefix(model, version), manifest)
        versions.append({"version": version, "uri": f"{store.uri}/{release_prefix(model, version)}",
                         "released_at": manifest.get("released_at"), "metrics": manifest.get("metrics", {}),
                         "latest": bool(latest and latest["version"] == version),
                         "complete": bool(manifest) and not damaged, **({"damaged": damaged} if damaged else {}),
                         **({"training_key": manifest["training_key"]} if "training_key" in manifest else {})})
    versions.sort(key=lambda v: (_released_at(v), v["version"]))
    return {"latest": latest["version"] if latest else None, **malformed, "versions": versions}


def content_damage(store: Store, prefix: str, manifest: Mapping) -> dict[str, str]:
    """The manifest's files under `prefix` whose content is not what it records (size and sha256, as the store
    checks them: `Store.verify`), each with what is wrong; {} when every file verifies. It reads every file (or
    the store's own checksum): what a skip, a promotion or `release ls --verify` stands on, not every listing."""
    from sknet.storage import StorageError

    damaged = {}
    for name, entry in (manifest.get("files") or {}).items():
        size, digest = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if not isinstance(size, int) or not isinstance(digest, str):
            damaged[name] = "manifest.json records no size and sha256 for it"
            continue
        try:
            store.verify(join(prefix, name), size, digest)
        except StorageError as exc:
            damaged[name] = str(exc)
    return damaged


def _damaged(manifest: Mapping, sizes: Mapping[str, int]) -> dict[str, str]:
    """The manifest's files that the store (`sizes`: name → bytes, from a listing) lacks or holds at another size."""
    damaged = {}
    for name, entry in (manifest.get("files") or {}).items():
        recorded = entry.get("size") if isinstance(entry, dict) else None
        if (size := sizes.get(name)) != recorded:
            stored = "missing" if size is None else f"{size:,} bytes"
            expected = f"{recorded:,} bytes" if isinstance(recorded, int) else "no size"
            damaged[name] = f"{stored}, manifest.json records {expected}"
    return damaged


def _complete_manifest(store: Store, model: str, version: str) -> dict:
    """The manifest of `version` of `model` if the version is complete: the manifest and every file it lists at
    its recorded size and sha256. Else `IncompleteError`, naming the version and what is wrong."""
    prefix = release_prefix(model, version)
    sizes = {o.key.removeprefix(prefix + "/"): o.size for o in store.list(prefix + "/")}
    where = f"cannot promote {store.uri}/{prefix}: version {version} of {model}"
    if MANIFEST not in sizes:
        what = "is incomplete (no manifest.json; its publication never finished)" if sizes else "does not exist"
        raise IncompleteError(f"{where} {what}")
    manifest = read_manifest(store, prefix)
    if damaged := _damaged(manifest, sizes) or content_damage(store, prefix, manifest):
        raise IncompleteError(f"{where} is incomplete: " + "; ".join(f"{name}: {what}" for name, what in
                                                                     damaged.items()))
    return manifest


def promote(store: Store, model: str, version: str, *, reason: str | None = None, by: str | None = None) -> dict:
    """Point LATEST at the published, complete `version`, older or not (a rollback); returns the new pointer.

    Refuses a version that does not exist, has no manifest or lacks a file of its manifest at the recorded
    size (`IncompleteError`, naming it). The write is a compare-and-swap like `move_latest`'s, without its
    "only forwards" rule; the pointer records `promoted_at`, and a release published before the promotion
    (a late retry of the release rolled back from) never moves LATEST past it. A new release moves it on as
    usual. A LATEST that cannot be followed (see `_read_latest`) is replaced; a claim a killed writer left
    beside the version's manifest is removed.

    The move is recorded as "promoted by <by>" (default: this process's user@host) and the `reason`, if any.
    """
    by, reason = by or who(), clean_reason(reason)  # a bad reason is refused before anything is read
    why = promotion_why(by, reason)
    manifest = _complete_manifest(store, check_segment("model", model), check_segment("version", version))
    clear_published_claim(store, release_prefix(model, version))

    def promoted(current: dict | None) -> dict:
        return {**_pointer(store, model, version, manifest, current, why=why, action="promoted", by=by,
                           reason=reason), "promoted_at": datetime.now(UTC).isoformat()}

    pointer, previous = _swap_latest(store, model, version, promoted, doing="promoting", replacing=True)
    return {**pointer, "previous": previous["version"] if previous else None}


def history(store: Store, model: str) -> tuple[list[dict], list[str]]:
    """The recorded moves of LATEST of `model`, oldest first, and notes on what the trail does not show (see
    `sknet.release.history.trail`); ([], []) before the first release."""
    return trail(store, model, _read_latest(store, check_segment("model", model))[1])
