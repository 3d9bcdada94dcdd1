from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.assets import materialize

from sknet.config import Config
from sknet.release import publish_release, publish_run
from sknet.report import plot_training_curve, read_metrics
from sknet.storage import store_from_config
from tasks.assets import describe_assets
from tasks.retry import transient_only


@task(name="publish-run", task_run_name="publish runs/{run_id}", retries=3, retry_delay_seconds=5,
      retry_condition_fn=transient_only, persist_result=True)
def publish_run_outputs(cfg: Config, run_id: str, run_dir: str, metrics: dict) -> str:
    """Metrics, loss curve, config and logs of this run, kept in runs/<id>/ whatever the gate says."""
    run = Path(run_dir)
    (run / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_training_curve(read_metrics(run), run / "curve.png", title=(
        f"{cfg.model.name}: top-1 {metrics['top_1_accuracy']:.4f}, top-5 {metrics['top_5_accuracy']:.4f}"
        + (" (SYNTHETIC data)" if metrics.get("synthetic_data") else "")))
    files = {name: run / name for name in ("eval.json", "curve.png", "config.yaml", "metrics.jsonl", "launch.json")}
    files.update({f"logs/{p.name}": p for p in (run / "logs").glob("*.log")})
    store = store_from_config(cfg.storage)
    publish_run(store, run_id, {k: p for k, p in files.items() if p.exists()}, metadata={"metrics": metrics})
    uri = f"{store.uri}/runs/{run_id}"
    create_link_artifact(link=f"{uri}/curve.png", link_text="loss curve (PNG)", key="sknet-curve")
    get_run_logger().info("run outputs in %s", uri)
    return uri


# The asset key is bound per run by the flow: .with_options(assets=[<release>/model.mindir], asset_deps=[ckpt]).
@materialize("sknet://release", name="publish-release", task_run_name="release {model} {version}", retries=3,
             retry_delay_seconds=5, retry_condition_fn=transient_only, persist_result=True)
def publish_model_release(cfg: Config, model: str, version: str, files: dict[str, str], lineage: dict,
                          metrics: dict) -> dict:
    """Upload, verify, write the manifest, then move LATEST; links to the objects in the UI."""
    lineage_path = Path(files["model.mindir"]).with_name("lineage.json")
    lineage_path.write_text(json.dumps(lineage, indent=2) + "\n")
    store = store_from_config(cfg.storage)
    pointer = publish_release(store, model, version, {**{k: Path(v) for k, v in files.items()},
                                                      "lineage.json": lineage_path},
                              metadata={"metrics": metrics, "lineage_digest": lineage["config"]["digest"]})
    for name in ("model.mindir", "lineage.json", "manifest.json"):
        create_link_artifact(link=f"{pointer['uri']}/{name}", link_text=f"{model} {version}: {name}",
                             key=f"sknet-release-{name.split('.')[0]}")
    describe_assets({"version": version, "sha256": lineage["artifacts"]["model.mindir"]["sha256"],
                     "dataset_digest": lineage["dataset"]["digest"], "config_digest": lineage["config"]["digest"],
                     **{k: v for k, v in metrics.items() if k.endswith("accuracy")}})
    get_run_logger().info("released %s; LATEST → %s", pointer["uri"], version)
    return pointer
