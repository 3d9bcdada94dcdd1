"""The chaos bench's checks: how a run's final state is classified, temp files, releases and LATEST checked
object by object, the run's mirrored checkpoints, and the evidence a run left."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.chaos.site import Site

MODEL = "sknet-tiny"
TEMP_NAME = re.compile(r"(^|/)(\.partial[^/]*|\.mirror-spool|\.writing)(/|$)")
CAUSES = [  # (cause, pattern in the state message), first match wins
    ("gate", r"gate failed"),
    ("disk", r"No space left|ENOSPC|Errno 28|disk quota|Disk quota"),
    ("rank", r"rank \S+ (exited|diverged|failed)|timed out after .* launch\.timeout"),
    ("storage", r"s3://|SlowDown|InternalError|ServiceUnavailable|StorageError|WriteConflict|503|500"),
    ("signal", r"SIGTERM|termination signal|terminated|status code (143|-15)|[Cc]ancel"),
]

# log lines below WARNING that still tell how a run went
EVIDENCE = re.compile(r"exited with code|[Rr]etr(y|ies)|SIGTERM|stopping all ranks|pulled the checkpoint|resum|"
                      r"mirroring failed")


def classify(state_type: str, message: str | None) -> tuple[str, str | None]:
    """(completed | failed_with_reason | other, the cause the message names): a run that did not complete
    counts as failed with a reason only if its state message says why."""
    if state_type == "COMPLETED":
        return "completed", None
    if state_type in ("FAILED", "CRASHED", "CANCELLED"):
        for cause, pattern in CAUSES:
            if re.search(pattern, message or ""):
                return "failed_with_reason", cause
    return "other", None


# ------------------------------------------------------------------ temp files, releases, mirror

def temp_paths(root: Path) -> list[str]:
    """Temp files and directories under `root` (relative paths): `.partial*`, `.mirror-spool`, `.writing`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if TEMP_NAME.search(p.name))


def temp_keys(keys) -> list[str]:
    return sorted(k for k in keys if TEMP_NAME.search(k))


def object_sha256(store, key: str, scratch: Path) -> str:
    """The sha256 of object `key`, downloaded to a file in `scratch` (removed again)."""
    target = scratch / "verify.bin"
    store.get(key, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    target.unlink()
    return digest


def verify_prefixes(store, parent: str, scratch: Path) -> dict:
    """Every `<parent>/<name>/` holding a manifest.json, each file of the manifest checked (present, size,
    sha256): {"complete": [names], "broken": {name: [problems]}, "lost_bytes": int, "unpublished": [names]}."""
    objects = {o.key: o.size for o in store.list(parent + "/")}
    names = sorted({k[len(parent) + 1:].split("/", 1)[0] for k in objects if k.count("/") > parent.count("/") + 1})
    report = {"complete": [], "broken": {}, "lost_bytes": 0, "unpublished": []}
    for name in names:
        prefix = f"{parent}/{name}"
        if f"{prefix}/manifest.json" not in objects:
            report["unpublished"].append(name)  # no manifest: not a release (a cut-off or refused one)
            continue
        problems = []
        for file, entry in json.loads(store.get_bytes(f"{prefix}/manifest.json"))["files"].items():
            key = f"{prefix}/{file}"
            if key not in objects:
                problems.append(f"{file} missing")
            elif objects[key] != entry["size"]:
                problems.append(f"{file} is {objects[key]} bytes, manifest says {entry['size']}")
            elif object_sha256(store, key, scratch) != entry["sha256"]:
                problems.append(f"{file} sha256 differs from the manifest")
            else:
                continue
            report["lost_bytes"] += entry["size"]
        if problems:
            report["broken"][name] = problems
        else:
            report["complete"].append(name)
    return report


def latest_check(store, complete: list[str]) -> dict:
    """LATEST of the model: present, and pointing at a complete release."""
    key = f"releases/{MODEL}/LATEST"
    if not store.exists(key):
        return {"version": None, "ok": True}  # no release yet
    version = json.loads(store.get_bytes(key))["version"]
    return {"version": version, "ok": version in complete}


def mirrored_steps(store, run_id: str) -> dict[int, int]:
    """Complete mirrored checkpoints of a run (the checkpoint and its record, uploaded last): step → bytes."""
    objects = {o.key.rsplit("/", 1)[-1]: o.size for o in store.list(f"runs/{run_id}/checkpoints/")}
    steps = {}
    for name, size in objects.items():
        match = re.fullmatch(r"step-(\d+)\.ckpt", name)
        if match and f"{name}.sha256" in objects:
            steps[int(match.group(1))] = size
    return steps


# ------------------------------------------------------------------ what a run left to explain it

def evidence(site: Site, run_id: str) -> dict:
    """What a run that failed or retried left to explain it: its warning and error log lines (the tail of
    each), the launcher's launch.json and the tail of rank 0's log."""
    logs = []
    for offset in range(0, 1000, 200):
        page = site.api("logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC",
                                        "limit": 200, "offset": offset})
        logs += page
        if len(page) < 200:
            break
    found = {"log": [f"{logging.getLevelName(e['level'])} {e['message'][-500:]}" for e in logs
                     if e["level"] >= logging.WARNING or EVIDENCE.search(e["message"])][-10:]}
    run_dir = site.work / "runs" / run_id
    with contextlib.suppress(OSError, ValueError):
        launch = json.loads((run_dir / "launch.json").read_text())
        found["launch"] = {k: launch.get(k) for k in ("reason", "exit_codes", "failed_rank")}
    with contextlib.suppress(OSError):
        lines = (run_dir / "logs" / "rank-0.log").read_text(errors="replace").splitlines()
        found["rank_0_log_tail"] = lines[-6:]
        found["rank_0_mirror_warnings"] = [line[:300] for line in lines if "mirroring failed" in line][-4:]
    return found
