"""The lineage record published with every run and release: what was trained, on what, by which code."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from sknet.config import Config
from sknet.training.run_record import recipe_digest

PACKAGES = ("sknet-pipeline", "mindspore", "numpy", "boto3", "prefect")


def code_commit() -> str:
    """The git commit of this checkout (with `+dirty` when it has changes), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names=PACKAGES) -> dict[str, str]:
    """The installed versions of `names` ("not installed" for a missing one)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def lineage_record(cfg: Config, *, run_id: str, dataset_uri: str, dataset_digest: str, synthetic_data: bool,
                   metrics: Mapping, artifacts: Mapping[str, Mapping], exported_model: Mapping | None = None,
                   dataset_census: Mapping | None = None) -> dict:
    """Facts linking dataset → checkpoint → model: digests, metrics (the checkpoint's, and `exported_model`: the
    shipped MINDIR's own score, `sknet.evaluation.exported`), config, code and packages."""
    return {
        "run_id": run_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"uri": dataset_uri, "digest": dataset_digest, "synthetic": synthetic_data,
                    **({"census": dict(dataset_census)} if dataset_census else {})},  # sknet.data.census
        "config": {"digest": cfg.digest(), "recipe_digest": recipe_digest(cfg), "resolved": cfg.to_dict()},
        "metrics": dict(metrics),
        "exported_model": None if exported_model is None else dict(exported_model),
        "artifacts": {name: dict(info) for name, info in artifacts.items()},
        "code": {"commit": code_commit(), "python": platform.python_version(), "packages": package_versions(PACKAGES)},
    }
