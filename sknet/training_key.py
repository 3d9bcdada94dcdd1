"""Whether a run would only repeat a release (issue #13 §2): the training key, and the release that has it.

A run's training key is the sha256 of what decides the model it trains: the dataset digest, the training
settings (`sknet.training.run_record.training_settings`, which leave out where things are and what happens after
training) plus `train.epochs`, and the code version (the git commit, with a digest of the uncommitted
changes when there are any; the package version outside git). Each release records it in its manifest
(`training_key`); a run whose key a release already has would train the same model again.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from sknet.config import Config
from sknet.lineage import code_commit
from sknet.release import list_releases
from sknet.training.run_record import training_settings
from sknet.storage import Store

PACKAGE = "sknet-pipeline"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> str:
    """`git:<commit>` (`+dirty:<digest of git diff HEAD>` with uncommitted changes), else `sknet-pipeline <version>`."""
    commit = code_commit()
    if commit == "unknown":  # not a git checkout: an installed package
        try:
            return f"{PACKAGE} {metadata.version(PACKAGE)}"
        except metadata.PackageNotFoundError:
            return "unknown"
    if commit.endswith("+dirty"):  # two different sets of uncommitted changes are two code versions
        diff = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "diff", "HEAD", "--no-ext-diff"],
                              capture_output=True, timeout=30).stdout
        commit += ":" + hashlib.sha256(diff).hexdigest()[:16]
    return f"git:{commit}"


def training_key(cfg: Config, dataset_digest: str) -> str:
    """sha256 of (dataset digest, training settings digest + train.epochs, code version)."""
    return _digest({"dataset": dataset_digest, "settings": _digest(training_settings(cfg)),
                    "epochs": cfg.train.epochs, "code": code_version()})


def release_with_key(store: Store, model: str, key: str, *, other_than: str | None = None) -> dict | None:
    """The newest complete release of `model` whose manifest records training `key` (not version `other_than`),
    as `sknet.release.list_releases` lists it; None if there is none."""
    versions = list_releases(store, model)[model]["versions"]
    return next((v for v in reversed(versions) if v.get("training_key") == key and v["version"] != other_than), None)


def unchanged_summary(release: Mapping, dataset: Mapping, key: str) -> str:
    """The run summary (markdown) of a run that trained nothing: what it found, and how to retrain anyway."""
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in release.get("metrics", {}).items() if k.endswith("accuracy"))
    return "\n".join([
        f"# sknet-train: unchanged since release {release['version']}",
        f"- release `{release['uri']}` (released {release.get('released_at')}) was trained from the same dataset "
        f"(`{dataset['digest'][:12]}`), training settings, epochs and code: training key `{key[:12]}`",
        f"- nothing trained, LATEST not moved; {metrics or 'no metrics recorded'}",
        "- to train anyway, run with `force=True`",
    ])
