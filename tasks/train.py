from __future__ import annotations

import threading

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.assets import materialize

from sknet.checkpoint import latest_checkpoint
from sknet.config import Config
from sknet.launch.launcher import launch
from sknet.report import epoch_rows, progress_of, read_metrics
from sknet.storage import sha256_file
from tasks.assets import describe_assets
from tasks.retry import transient_only


class _Progress:
    """Forwards rank output to the task log and moves the UI's progress artifact by whole percents."""

    def __init__(self, logger):
        self.logger, self.lock, self.percent = logger, threading.Lock(), 0
        self.artifact = create_progress_artifact(0.0, key="sknet-training-progress",
                                                 description="training steps done (%)")

    def __call__(self, line: str) -> None:
        self.logger.info(line)
        if (found := progress_of(line)) is None:
            return
        step, total, loss = found
        percent = int(100 * step / total)
        with self.lock:
            if percent <= self.percent:
                return
            self.percent = percent
        update_progress_artifact(self.artifact, percent, description=f"step {step}/{total}, loss {loss:.4f}")


# The asset key is bound per run by the flow: train.with_options(assets=[<run>/checkpoints], asset_deps=[dataset]).
@materialize("sknet://checkpoint", name="train", task_run_name="train {cfg.model.name} on {cfg.launch.ranks} rank(s)",
             retries=2, retry_delay_seconds=10, retry_condition_fn=transient_only, persist_result=True)
def train(cfg: Config, dataset_digest: str) -> dict:
    """All ranks via the launcher, their output live in this task's log; a retry resumes from a checkpoint."""
    result = launch(cfg, on_line=_Progress(get_run_logger())).to_dict()
    step, checkpoint = latest_checkpoint(cfg.train.output_dir)
    records = read_metrics(cfg.train.output_dir)
    create_table_artifact(epoch_rows(records), key="sknet-epochs", description="per-epoch training metrics")
    losses = [r["loss"] for r in records if r["event"] == "step"]
    digest = sha256_file(checkpoint)
    describe_assets({"step": step, "sha256": digest, "dataset_digest": dataset_digest,
                     "final_loss": losses[-1] if losses else None, "config_digest": cfg.digest()})
    return {**result, "checkpoint": str(checkpoint), "checkpoint_sha256": digest, "step": step}
