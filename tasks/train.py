from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.assets import materialize

from sknet.config import Config
from sknet.launch.launcher import launch
from sknet.report import ProgressTracker, epoch_rows, read_metrics
from sknet.run_outputs import training_outcome
from tasks._support import describe_assets, progress_artifact, retry_transient


# The asset key is bound per run by the flow: train.with_options(assets=[<run>/checkpoints], asset_deps=[dataset]).
@materialize("sknet://checkpoint", name="train", task_run_name="train {cfg.model.name} on {cfg.launch.ranks} rank(s)",
             persist_result=True, **retry_transient(retries=2, delay_seconds=10))
def train(cfg: Config, dataset_digest: str) -> dict:
    """All ranks via the launcher, their output live in this task's log. A crashed or stalled rank
    (launch.stall_timeout_seconds) fails it as transient: the retry resumes from the newest checkpoint."""
    progress = ProgressTracker(get_run_logger().info, progress_artifact("sknet-training-progress",
                                                                         "training steps done (%)"))
    run = training_outcome(launch(cfg, on_line=progress).to_dict(), cfg.train.output_dir)
    create_table_artifact(epoch_rows(read_metrics(cfg.train.output_dir)), key="sknet-epochs",
                          description="per-epoch training metrics")
    describe_assets({"step": run["step"], "sha256": run["checkpoint_sha256"], "dataset_digest": dataset_digest,
                     "final_loss": run["final_loss"], "config_digest": cfg.digest()})
    return run
