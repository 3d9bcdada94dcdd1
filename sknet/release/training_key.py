"""Whether a run would only repeat a release (issue #13 §2): the training key, and the release that has it.

The rule: the key covers everything that changes a release's files or its measured metrics, and nothing else.
So it holds
- the dataset digest (the data trained on and evaluated on);
- the settings that decide the weights (`sknet.training.run_record.training_settings`: model, data size and
  shape, batch per rank and the number of ranks — together the global batch —, seed, optimizer, schedule,
  precision, device) and `train.epochs`;
- the evaluation settings (`data.num_eval_samples`: the metrics are measured on them) and the export settings
  (`export.*`: the MINDIR and its round-trip check);
- the versions of the packages that compute any of these (MindSpore, numpy);
- the code: a digest of every module of the `sknet` package as it is on disk, tracked in git or not (ranks,
  evaluation and export import only sknet code; a git commit would miss an untracked module and change with
  every README edit).
Not in it: where things are (paths, URIs, storage), how the ranks are launched, the logging, checkpoint and
sink cadence and the divergence guard (they change neither the weights nor the metrics), and the gate: a
gate-only change re-gates the release the run would repeat (`sknet.run_outputs.regate_release`).
Each release records its key in its manifest (`training_key`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from sknet.config import Config
from sknet.markdown import code, number, text
from sknet.release.lineage import package_versions
from sknet.release.registry import content_damage, list_releases, release_prefix
from sknet.storage import Store, read_manifest
from sknet.training.run_record import training_settings

log = logging.getLogger(__name__)
KEYED_PACKAGES = ("mindspore", "numpy")
PACKAGE_ROOT = Path(__file__).resolve().parent


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_version(root: Path = PACKAGE_ROOT) -> str:
    """`sknet-src:<sha256 of every module under root, with its path>`: the code that trains, evaluates and exports."""
    digest = hashlib.sha256()
    for source in sorted(root.rglob("*.py")):
        digest.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes() + b"\0")
    return f"sknet-src:{digest.hexdigest()}"


def training_key(cfg: Config, dataset_digest: str) -> str:
    """sha256 of what a release's files and metrics depend on (see the module docstring for the rule)."""
    return _digest({"dataset": dataset_digest, "settings": _digest(training_settings(cfg)),
                    "epochs": cfg.train.epochs, "evaluation": {"num_eval_samples": cfg.data.num_eval_samples},
                    "export": cfg.to_dict()["export"], "packages": package_versions(KEYED_PACKAGES),
                    "code": code_version()})


def release_with_key(store: Store, model: str, key: str, *, other_than: str | None = None) -> dict | None:
    """The newest complete release of `model` whose manifest records training `key` (not version `other_than`),
    as `sknet.release.list_releases` lists it, its files verified by content (a file changed in place at the same
    size makes the release one not to stand on: the run trains); None if there is none."""
    versions = list_releases(store, model)[model]["versions"]
    for release in reversed(versions):
        if release.get("training_key") != key or release["version"] == other_than or not release["complete"]:
            continue
        prefix = release_prefix(model, release["version"])
        if damaged := content_damage(store, prefix, read_manifest(store, prefix)):
            log.warning("release %s has this run's training key but is damaged (%s): not unchanged, training",
                        release["uri"], "; ".join(f"{name}: {what}" for name, what in damaged.items()))
            continue
        return release
    return None


def unchanged_summary(release: Mapping, dataset: Mapping, key: str) -> str:
    """The run summary (markdown) of a run that trained nothing: what it found, and how to retrain anyway (values
    escaped with `sknet.markdown`, a non-finite metric shown as "—")."""
    metrics = ", ".join(f"{text(k)} {number(v)}" for k, v in release.get("metrics", {}).items()
                        if k.endswith("accuracy") and not isinstance(v, list))
    return "\n".join([
        f"# sknet-train: unchanged since release {text(release['version'])}",
        f"- release {code(release['uri'])} (released {text(release.get('released_at'))}) was trained from the same "
        f"dataset ({code(dataset['digest'][:12])}), training settings, epochs and code: training key {code(key[:12])}",
        f"- nothing trained, LATEST not moved; {metrics or 'no metrics recorded'}",
        "- to train anyway, run with `force=True`",
    ])
