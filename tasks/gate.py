from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.gate import enforce, gate
from sknet.release import latest_release
from sknet.storage import store_from_config


@task(name="gate", task_run_name="gate {cfg.gate.metric} ≥ {cfg.gate.threshold}", persist_result=True)
def gate_model(cfg: Config, metrics: dict, model: str) -> dict:
    """Pass or raise `GateFailed` (never retried); with gate.compare_to_latest, also beat the release."""
    champion = None
    if cfg.gate.compare_to_latest:
        current = latest_release(store_from_config(cfg.storage), model)
        champion = current.get("metrics") if current else None
    verdict = enforce(gate(metrics, metric=cfg.gate.metric, threshold=cfg.gate.threshold,
                           champion_metrics=champion, margin=cfg.gate.margin))
    get_run_logger().info(verdict.message)
    return verdict.to_dict()
