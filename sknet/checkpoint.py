"""Checkpoint files of a run: `<run>/checkpoints/step-00000040.ckpt`, written atomically, pruned, resumed.

With a mirror (`train.checkpoint_mirror`), each checkpoint and the metrics log up to it are also copied to
object storage as they are written, so a run retried on another machine resumes from the bucket.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
from pathlib import Path

from sknet.errors import CheckpointError
from sknet.run_files import CHECKPOINTS_DIR, METRICS_FILE, MIRROR_SPOOL_DIR
from sknet.storage import Store, StorageError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.ckpt$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


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


def _step_of(key: str) -> int | None:
    match = _NAME.match(key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


class CheckpointMirror:
    """A run's checkpoints (and its metrics log) under a store prefix: pushed as written, pulled to resume."""

    LOG = METRICS_FILE

    def __init__(self, store: Store):
        self.store = store

    def steps(self) -> list[int]:
        return sorted(step for o in self.store.list() if (step := _step_of(o.key)) is not None)

    def push(self, output_dir: str | Path, step: int, keep: int, *, checkpoint: Path | None = None,
             metrics: Path | None = None) -> None:
        """Upload the checkpoint of `step`, then the metrics log; keep the newest `keep` checkpoints.
        `checkpoint`/`metrics` are snapshots to upload instead of the run directory's files."""
        self.store.put(checkpoint or checkpoint_path(output_dir, step), checkpoint_path("", step).name)
        log_file = metrics or Path(output_dir) / self.LOG
        if log_file.exists():
            self.store.put(log_file, self.LOG)
        for old in self.steps()[:-keep]:
            self.store.delete(checkpoint_path("", old).name)

    def pull(self, output_dir: str | Path) -> int | None:
        """Download the newest mirrored checkpoint if it is newer than the local ones; its step, or None."""
        steps = self.steps()
        local = latest_checkpoint(output_dir)
        if not steps or (local is not None and local[0] >= steps[-1]):
            return None
        step = steps[-1]
        self.store.get(checkpoint_path("", step).name, checkpoint_path(output_dir, step))
        if self.store.exists(self.LOG):
            self.store.get(self.LOG, Path(output_dir) / self.LOG)
        return step


class BackgroundUploads:
    """Mirror pushes off the training thread: `submit` snapshots a checkpoint (a hard link, so pruning cannot
    take it away) and the metrics log, and returns; a worker thread uploads. At most `pending` uploads wait
    (then `submit` blocks: backpressure rather than a growing queue), a step is never uploaded twice, a
    failed upload is a warning (the local checkpoint still allows a resume), and `close` drains the queue."""

    def __init__(self, mirror: CheckpointMirror, output_dir: str | Path, keep: int, pending: int = 1):
        self.mirror, self.output_dir, self.keep = mirror, Path(output_dir), keep
        self.spool = self.output_dir / MIRROR_SPOOL_DIR
        self.queue: queue.Queue = queue.Queue(maxsize=pending)
        self.submitted: set[int] = set()
        self.worker = threading.Thread(target=self._work, name="checkpoint-mirror", daemon=True)
        self.worker.start()

    def submit(self, step: int) -> None:
        if step in self.submitted:
            return
        self.submitted.add(step)
        self.spool.mkdir(exist_ok=True)
        snapshot = self.spool / checkpoint_path("", step).name
        snapshot.unlink(missing_ok=True)
        os.link(checkpoint_path(self.output_dir, step), snapshot)
        metrics = self.spool / f"{METRICS_FILE}.{step}"
        if (self.output_dir / METRICS_FILE).exists():
            shutil.copyfile(self.output_dir / METRICS_FILE, metrics)
        self.queue.put((step, snapshot, metrics))

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            step, snapshot, metrics = item
            try:
                self.mirror.push(self.output_dir, step, self.keep, checkpoint=snapshot, metrics=metrics)
                log.info("mirrored the checkpoint of step %d to %s", step, self.mirror.store.uri)
            except (StorageError, OSError) as exc:
                log.warning("checkpoint of step %d kept locally only, mirroring failed: %s", step, exc)
            finally:
                snapshot.unlink(missing_ok=True)
                metrics.unlink(missing_ok=True)

    def close(self) -> None:
        """Wait for every submitted upload to finish (or fail), then stop the worker."""
        self.queue.put(None)
        self.worker.join()
        shutil.rmtree(self.spool, ignore_errors=True)

    def __enter__(self) -> BackgroundUploads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
