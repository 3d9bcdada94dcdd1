from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact

from sknet.config import Config
from sknet.release import publish_release, publish_run
from sknet.storage import store_from_config
from tasks.retry import transient_only


def _files(directory: Path, names: dict[str, Path]) -> dict[str, Path]:
    return {name: path for name, path in names.items() if path.exists()}


@task(name="publish-run", task_run_name="publish runs/{run_id}", retries=3, retry_delay_seconds=5,
      retry_condition_fn=transient_only)
def publish_run_outputs(cfg: Config, run_id: str, run_dir: str, metrics: dict) -> str:
    """Metrics, config and logs of this run, kept in runs/<id>/ whatever the gate says."""
    run = Path(run_dir)
    (run / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    files = {"eval.json": run / "eval.json", "config.yaml": run / "config.yaml",
             "metrics.jsonl": run / "metrics.jsonl", "launch.json": run / "launch.json"}
    files.update({f"logs/{p.name}": p for p in (run / "logs").glob("*.log")})
    store = store_from_config(cfg.storage)
    publish_run(store, run_id, _files(run, files), metadata={"metrics": metrics})
    uri = f"{store.uri}/runs/{run_id}"
    get_run_logger().info("run outputs in %s", uri)
    return uri


@task(name="publish-release", task_run_name="release {model} {version}", retries=3, retry_delay_seconds=5,
      retry_condition_fn=transient_only)
def publish_model_release(cfg: Config, model: str, version: str, files: dict[str, str], lineage: dict,
                          metrics: dict) -> dict:
    """Upload, verify, write the manifest, then move LATEST; links to the objects in the UI."""
    lineage_path = Path(files["model.mindir"]).with_name("lineage.json")
    lineage_path.write_text(json.dumps(lineage, indent=2) + "\n")
    store = store_from_config(cfg.storage)
    pointer = publish_release(store, model, version, {**{k: Path(v) for k, v in files.items()},
                                                      "lineage.json": lineage_path},
                              metadata={"metrics": metrics, "lineage_digest": lineage["config"]["digest"]})
    create_link_artifact(link=f"{pointer['uri']}/model.mindir", link_text=f"{model} {version} (MINDIR)",
                         key="sknet-release")
    get_run_logger().info("released %s; LATEST → %s", pointer["uri"], version)
    return pointer
