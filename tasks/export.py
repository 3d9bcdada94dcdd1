from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.export import export_scored


@task(name="export", task_run_name="export {out}", persist_result=True)
def export(cfg: Config, checkpoint: str, out: str, checkpoint_metrics: dict) -> dict:
    """MINDIR with its round-trip check, scored on the eval set; refused unless its top-1 is the checkpoint's."""
    model = export_scored(cfg, checkpoint, out, checkpoint_metrics)
    scored = model["exported_model"]
    get_run_logger().info("exported model through %s: top-1 %.4f, top-5 %.4f on %d samples (checkpoint top-1 %.4f)",
                          scored["runtime"], scored["top_1_accuracy"], scored["top_5_accuracy"], scored["samples"],
                          checkpoint_metrics["top_1_accuracy"])
    return model
