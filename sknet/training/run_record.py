"""A run directory knows its run: `run.json` records the training-relevant settings of the run that first
used it, and a later run there must have the same ones.

What may change between the runs of one directory (`MAY_CHANGE`): where things are and how they are watched
(data.uri, storage, launch, logging and checkpoint cadence, the divergence guard), what happens after
training (gate, export), and `train.epochs` — more epochs continue the run, with the learning-rate schedule
recomputed for the new length. Everything else (model, data size and shape, batch, seed, optimizer,
schedule, precision, device) decides what the checkpoints contain, so a change is refused before anything
compiles, naming the keys, with the two ways out.
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
    "data.uri", "data.num_parallel_workers", "data.num_eval_samples", "storage.", "launch.", "gate.", "export.",
    "train.output_dir", "train.checkpoint_mirror", "train.log_every_steps", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "train.divergence_patience", "train.max_loss", "train.sink_size", "train.epochs",
)


def training_settings(cfg: Config) -> dict[str, Any]:
    """The dotted keys of `cfg` that decide what the run's checkpoints contain."""
    flat: dict[str, Any] = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if not any(dotted == rule or (rule.endswith(".") and dotted.startswith(rule)) for rule in MAY_CHANGE):
                flat[dotted] = value
    return flat


def check_run_dir(cfg: Config, output_dir: str | Path) -> None:
    """Record the run's settings in a new run directory; refuse one that holds a run with other settings."""
    path = Path(output_dir) / RUN_RECORD_FILE
    settings = training_settings(cfg)
    if not path.exists():
        write_atomic(path, lambda partial: partial.write_text(
            json.dumps({"settings": settings}, indent=2, sort_keys=True) + "\n"))
        return
    try:
        recorded = json.loads(path.read_text())["settings"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a run record ({exc}); move the directory aside or use --fresh") from None
    differ = sorted(k for k in recorded.keys() | settings.keys() if recorded.get(k) != settings.get(k))
    if differ:
        changes = ", ".join(f"{k}: {recorded.get(k)!r} → {settings.get(k)!r}" for k in differ)
        raise ConfigError(
            f"{output_dir} holds a run with other settings ({changes}); its checkpoints cannot continue this "
            "one. Use another train.output_dir, or --fresh to move that run aside (it is kept, renamed)")


def move_aside(output_dir: str | Path) -> Path | None:
    """Rename an existing run directory to `<dir>.replaced-<UTC time>` (never delete it); the new name."""
    output_dir = Path(output_dir)
    if not output_dir.exists():
        return None
    target = output_dir.with_name(f"{output_dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    output_dir.rename(target)
    return target
