from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.evaluate import evaluate as evaluate_checkpoint


@task(name="evaluate", task_run_name="evaluate {checkpoint}", persist_result=True)
def evaluate(cfg: Config, checkpoint: str) -> dict:
    metrics = evaluate_checkpoint(cfg, checkpoint)
    get_run_logger().info("top-1 %.4f, top-5 %.4f on %d samples", metrics["top_1_accuracy"],
                          metrics["top_5_accuracy"], metrics["samples"])
    return metrics
