from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from sknet.config import Config
from sknet.evaluation.evaluate import evaluate as evaluate_checkpoint
from sknet.evaluation.evaluate import per_class_rows
from sknet.run_files import PREDICTIONS_FILE


@task(name="evaluate", task_run_name="evaluate {checkpoint}", persist_result=True)
def evaluate(cfg: Config, checkpoint: str) -> dict:
    """Metrics, per-class accuracy and confusion matrix; each sample's prediction kept in the run directory."""
    metrics = evaluate_checkpoint(cfg, checkpoint, predictions_out=Path(cfg.train.output_dir, PREDICTIONS_FILE))
    create_table_artifact(key="sknet-per-class", table=per_class_rows(metrics),
                          description="accuracy per class and where its samples went (the confusion matrix's rows)")
    get_run_logger().info("top-1 %.4f, top-5 %.4f on %d samples", metrics["top_1_accuracy"],
                          metrics["top_5_accuracy"], metrics["samples"])
    return metrics
