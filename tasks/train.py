from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.launch.launcher import launch
from tasks.retry import transient_only


@task(name="train", task_run_name="train {cfg.model.name} on {cfg.launch.ranks} rank(s)", retries=2,
      retry_delay_seconds=10, retry_condition_fn=transient_only)
def train(cfg: Config) -> dict:
    """All ranks via the launcher; their output streams into this task's log. A retry resumes."""
    logger = get_run_logger()
    result = launch(cfg, on_line=logger.info)
    return result.to_dict()
