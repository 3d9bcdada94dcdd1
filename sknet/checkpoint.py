"""Checkpoint files of a run: `<run>/checkpoints/step-00000040.ckpt`, written atomically, pruned, resumed."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sknet.errors import CheckpointError

_NAME = re.compile(r"^step-(\d{8})\.ckpt$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"step-{step:08d}.ckpt"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first; partial files never match the name."""
    directory = checkpoint_dir(output_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(cell, output_dir: str | Path, step: int, keep: int) -> Path:
    """Save `cell` (network and optimizer state) for `step`, then keep only the newest `keep` files."""
    import mindspore as ms

    final = checkpoint_path(output_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".partial-{final.name}")
    ms.save_checkpoint(cell, str(partial))
    os.replace(partial, final)
    for _, old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_into(cell, path: str | Path, *, what: str = "network") -> None:
    """Load every parameter of `cell` from `path`; fail naming the file when one is missing or misshaped."""
    import mindspore as ms

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        params = ms.load_checkpoint(str(path))
        missing, _ = ms.load_param_into_net(cell, params)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the {what}: {exc}") from None
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} parameters of the {what} (first: {missing[0]}); "
            "was it trained with another model.name, model.stem or model.num_classes?"
        )
