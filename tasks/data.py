from __future__ import annotations

from prefect import get_run_logger, task

from sknet.config import Config
from sknet.data import stage as staging
from sknet.data.census import DEFAULT_MAX_CLASS_SKEW
from sknet.data.source import resolve_dataset
from sknet.storage import open_store
from tasks._support import retry_transient


@task(name="fetch-dataset", task_run_name="fetch {cfg.data.uri}", persist_result=True, **retry_transient())
def fetch_dataset(cfg: Config, cache_dir: str) -> dict:
    """A verified local copy of `data.uri`: fetched into the digest-keyed cache if remote, verified in place if local.
    A dataset outside `data.allowed_prefixes` is refused before anything is read (a ConfigError: not retried)."""
    dataset = resolve_dataset(cfg, cache_dir)
    get_run_logger().info("dataset %s at %s%s", dataset.digest[:12], dataset.path,
                          " (SYNTHETIC data)" if dataset.synthetic else "")
    return dataset.to_dict()



# The source is not in the task run's name: it may be a presigned URL, whose token the run name would show.
# The result is persisted, so a retry of the flow run reuses it (and announces what this attempt staged).
@task(name="stage-dataset", task_run_name="stage into {dest}", persist_result=True, **retry_transient())
def stage_dataset(source: str, dest: str, expected_md5: str | None = None,
                  max_class_skew: float = DEFAULT_MAX_CLASS_SKEW, allow_skew: bool = False) -> dict:
    """Publish SOURCE (URL, tarball or layout directory) under its manifest digest in DEST; if already there,
    upload again the objects that are missing or damaged. A skewed dataset is refused unless `allow_skew`."""
    staged = staging.stage_dataset(source, open_store(dest), expected_md5=expected_md5,
                                   max_class_skew=max_class_skew, allow_skew=allow_skew)
    get_run_logger().info("%s", staged.summary())
    return staged.to_dict()
