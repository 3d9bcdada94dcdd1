from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.preflight.registry import check_host


@task(name="preflight", task_run_name="preflight this {cfg.train.device_target} host")
def preflight(cfg: Config, work_dir: str) -> dict:
    """`sknet preflight --quick` before training on Ascend: a broken host fails here, in seconds, naming the device
    (never retried: a host does not heal by waiting)."""
    report = check_host(cfg, f"{work_dir}/preflight")
    get_run_logger().info("preflight passed: %s", ", ".join(f"{c['name']} {c['status']}" for c in report["checks"]))
    return report
