from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.data.layout import TEST_FILE, is_synthetic, layout_dir, local_dataset_path
from sknet.data.stage import dataset_manifest, fetch, split_dataset_uri
from sknet.storage import store_from_config
from tasks.retry import transient_only


def _is_local_layout(uri: str) -> bool:
    return not uri.startswith("s3://") and (layout_dir(local_dataset_path(uri)) / TEST_FILE).exists()


@task(name="fetch-dataset", task_run_name="fetch {cfg.data.uri}", retries=3, retry_delay_seconds=5,
      retry_condition_fn=transient_only, persist_result=True)
def fetch_dataset(cfg: Config, cache_dir: str) -> dict:
    """A verified local copy of `data.uri`: fetched into the cache if remote, verified in place if local.

    The cache is keyed on the dataset digest, so a retry or a later run finds it without downloading.
    """
    logger = get_run_logger()
    uri = cfg.data.uri
    if _is_local_layout(uri):
        path = layout_dir(local_dataset_path(uri))
        digest = dataset_manifest(path)["digest"]  # verifies the layout
    else:  # a staged dataset: <store>/<digest>
        store = store_from_config(cfg.storage, split_dataset_uri(uri)[0])
        path, digest = fetch(uri, store, Path(cache_dir))  # verified against its manifest
    synthetic = is_synthetic(path)
    logger.info("dataset %s at %s%s", digest[:12], path, " (SYNTHETIC data)" if synthetic else "")
    return {"uri": uri, "path": str(path), "digest": digest, "synthetic": synthetic}
