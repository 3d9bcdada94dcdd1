"""A run directory knows its run: `run.json` records the dataset (its digest) and the training-relevant
settings of the run that first used it, and a later run there — or one that pulls its mirrored checkpoints on
another machine — must have the same ones.

What may change between the runs of one directory (`MAY_CHANGE`): where things are and how they are watched
(data.uri — the digest says which data it is —, storage, but not data.num_parallel_workers: MindSpore's random
augmentations draw per worker, so another worker count trains other weights (issue #27 §4), how the ranks are
launched, logging and checkpoint
cadence, the divergence guard), what happens after training (gate, export, eval), and `train.epochs` — more
epochs continue the run, with the learning-rate schedule recomputed for the new length. Everything else
(the dataset, model, data size and shape, batch, the number of ranks, seed, optimizer, schedule, precision,
device) decides what the checkpoints contain, so a change is refused before anything compiles, naming the
keys, with the two ways out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sknet.config import Config
from sknet.errors import ConfigError
from sknet.run_files import RUN_RECORD_FILE
from sknet.storage import write_atomic

MAY_CHANGE = (
    "data.uri", "data.allowed_prefixes", "data.num_eval_samples", "storage.", "gate.",
    "export.",
    "launch.backend", "launch.chip", "launch.timeout_minutes", "launch.stop_grace_seconds",
    "launch.stall_timeout_seconds",
    "launch.rank_table", "launch.server_id",
    "launch.nodes", "launch.node_rank", "launch.master_addr", "launch.master_port",
    "train.output_dir", "train.checkpoint_mirror", "train.log_every_steps", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "train.divergence_patience", "train.max_loss", "train.sink_size", "train.epochs",
)
DATASET_KEY = "dataset_digest"  # in run.json beside "settings"


def training_settings(cfg: Config) -> dict[str, Any]:
    """The dotted keys of `cfg` that decide what the run's checkpoints contain."""
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if not any(dotted == rule or (rule.endswith(".") and dotted.startswith(rule)) for rule in MAY_CHANGE):
                flat[dotted] = value
    return flat


def recipe_digest(cfg: Config) -> str:
    """sha256 of the recipe: the settings that decide the weights (`training_settings`) and `train.epochs`. The same
    for every run of one profile and overrides, wherever it runs and publishes (`Config.digest` covers every key,
    paths and run ids included, so it differs per run); `sknet config show`, the flow log, the run summary, the
    model card and lineage print both, each labelled (issue #27 §14)."""
    import hashlib

    material = {"settings": training_settings(cfg), "train.epochs": cfg.train.epochs}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def run_record(cfg: Config, dataset: str | None) -> dict[str, Any]:
    """What `run.json` holds for a run of `cfg` on the dataset of digest `dataset` (None: a launch that trains
    nothing, such as preflight's collective smoke)."""
    return {"settings": training_settings(cfg), DATASET_KEY: dataset}


def dataset_digest(layout: str | Path) -> str:
    """The identity of a local CIFAR-10 layout: the digest a fetched copy was verified against (its `.verified`
    marker, written by `sknet.data.stage.fetch` after a full check), else the digest of its file table (the
    staged manifest's, computed by hashing the files: ≈184 MB)."""
    from sknet.data.cache import VERIFIED_MARKER
    from sknet.data.layout import layout_dir
    from sknet.data.manifest import dataset_manifest

    directory = layout_dir(layout)
    marker = directory / VERIFIED_MARKER
    if marker.is_file() and len(digest := marker.read_text().strip()) == 64:
        return digest
    return dataset_manifest(directory)["digest"]


def record_differences(recorded: dict, expected: dict) -> list[str]:
    """`key: old → new` for each setting (and the dataset) in which two run records differ."""
    old = {**recorded.get("settings", {}), DATASET_KEY: recorded.get(DATASET_KEY)}
    new = {**expected["settings"], DATASET_KEY: expected[DATASET_KEY]}
    if old[DATASET_KEY] is None or new[DATASET_KEY] is None:  # not recorded (older record), or no training
        old[DATASET_KEY] = new[DATASET_KEY]
    return [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def check_run_dir(cfg: Config, output_dir: str | Path, dataset: str | None) -> None:
    """Record the run (settings, `dataset` digest) in a new run directory; refuse one that holds another run."""
    path = Path(output_dir) / RUN_RECORD_FILE
    expected = run_record(cfg, dataset)
    if path.exists():
        recorded = read_run_record(path)
        differ = record_differences(recorded, expected)
        expected[DATASET_KEY] = dataset or recorded.get(DATASET_KEY)
        if differ:
            raise ConfigError(
                f"{output_dir} holds a run with other settings ({', '.join(differ)}); its checkpoints cannot "
                "continue this one. Use another train.output_dir, or --fresh to move that run aside (it is kept, "
                "renamed)")
    write_atomic(path, lambda partial: partial.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n"))


def read_run_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a run record ({exc}); move the directory aside or use --fresh") from None
    return checked_run_record(record, str(path), "; move the directory aside or use --fresh")


def checked_run_record(record: object, where: str, fix: str = "") -> dict:
    """`record` if it is shaped as `run_record` makes it ({"settings": {dotted key: value}, "dataset_digest": str or
    null}), else `ConfigError` naming `where` (a run directory's file or a mirror's object)."""
    digest = record.get(DATASET_KEY) if isinstance(record, dict) else None
    if (not isinstance(record, dict) or not isinstance(record.get("settings"), dict)
            or not all(isinstance(k, str) for k in record["settings"])
            or not (digest is None or isinstance(digest, str))):
        raise ConfigError(f"{where}: not a run record: {json.dumps(record)[:200]} (expected {{\"settings\": {{…}}, "
                          f"\"{DATASET_KEY}\": …}}){fix}")
    return record


def move_aside(output_dir: str | Path) -> Path | None:
    """Rename an existing run directory to `<dir>.replaced-<UTC time>` (never delete it); the new name."""
    output_dir = Path(output_dir)
    if not output_dir.exists():
        return None
    target = output_dir.with_name(f"{output_dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    output_dir.rename(target)
    return target
