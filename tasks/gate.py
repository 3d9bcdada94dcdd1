from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.run_outputs import gate_against_latest, regate_release


@task(name="gate", task_run_name="gate {cfg.gate.metric} ≥ {cfg.gate.threshold}", persist_result=True)
def gate_model(cfg: Config, metrics: dict, model: str) -> dict:
    """Pass or raise `GateFailed` (never retried); with gate.compare_to_latest, also beat the release."""
    verdict = gate_against_latest(cfg, metrics, model)
    get_run_logger().info(verdict.message)
    return verdict.to_dict()


@task(name="gate", task_run_name="re-gate release {release[version]}", persist_result=True)
def regate(cfg: Config, release: dict, model: str) -> dict:
    """An unchanged run: the release it would repeat, judged by this run's gate (raises `GateFailed` on a miss)."""
    verdict = regate_release(cfg, release, model)
    get_run_logger().info("release %s: %s", release["version"], verdict.message)
    return verdict.to_dict()
