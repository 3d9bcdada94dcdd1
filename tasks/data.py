from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.data.source import resolve_dataset
from tasks._support import retry_transient


@task(name="fetch-dataset", task_run_name="fetch {cfg.data.uri}", persist_result=True, **retry_transient())
def fetch_dataset(cfg: Config, cache_dir: str) -> dict:
    """A verified local copy of `data.uri`: fetched into the digest-keyed cache if remote, verified in place if local."""
    dataset = resolve_dataset(cfg, cache_dir)
    get_run_logger().info("dataset %s at %s%s", dataset.digest[:12], dataset.path,
                          " (SYNTHETIC data)" if dataset.synthetic else "")
    return dataset.to_dict()
