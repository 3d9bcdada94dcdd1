from __future__ import annotations

from prefect import task

from sknet.config import Config
from sknet.export import export_mindir


@task(name="export", task_run_name="export {out}", persist_result=True)
def export(cfg: Config, checkpoint: str, out: str) -> dict:
    return export_mindir(cfg, checkpoint, out)
