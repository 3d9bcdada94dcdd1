"""The nightly flow: data → train → evaluate → publish run → gate → export → release."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from sknet.config import load_config
from sknet.lineage import lineage_record
from tasks.data import fetch_dataset
from tasks.evaluate import evaluate
from tasks.export import export
from tasks.gate import gate_model
from tasks.publish import publish_model_release, publish_run_outputs
from tasks.train import train

RELEASED_MODEL = {"sknet50": "sknet50", "resnext50": "resnext50", "sknet_tiny": "sknet-tiny"}


@flow(name="sknet-train")
def sknet_train(
    config: str = "cifar10-ascend8",
    overrides: dict | None = None,
    dataset_uri: str | None = None,
    gate_threshold: float | None = None,
    publish_to: str | None = None,
    work_dir: str = "work",
) -> dict:
    """Train, check and ship an SKNet classifier; parameters are validated before any compute."""
    run_id = flow_run.get_id() or "local"
    extra = {"train.output_dir": str(Path(work_dir, "runs", run_id).resolve())}
    extra |= {"data.uri": dataset_uri} if dataset_uri else {}
    extra |= {"gate.threshold": gate_threshold} if gate_threshold is not None else {}
    extra |= {"storage.uri": publish_to} if publish_to else {}
    cfg = load_config(config, {**(overrides or {}), **extra})
    logger = get_run_logger()
    logger.info("config %s, digest %s", config, cfg.digest()[:12])

    dataset = fetch_dataset(cfg, cache_dir=str(Path(work_dir, "cache")))
    cfg = cfg.override({"data.uri": dataset["path"]})
    run = train(cfg)
    checkpoint = sorted(Path(run["checkpoint_dir"]).glob("step-*.ckpt"))[-1]
    metrics = evaluate(cfg, str(checkpoint))
    run_uri = publish_run_outputs(cfg, run_id, run["output_dir"], metrics)
    _summarize(cfg, dataset, metrics, run_uri)
    model_name = RELEASED_MODEL[cfg.model.name]
    gate_model(cfg, metrics, model_name)
    model = export(cfg, str(checkpoint), str(Path(run["output_dir"], "model.mindir")))
    lineage = lineage_record(cfg, run_id=run_id, dataset_uri=dataset["uri"], dataset_digest=dataset["digest"],
                             synthetic_data=dataset["synthetic"], metrics=metrics,
                             artifacts={"model.mindir": model})
    return publish_model_release(
        cfg, model_name, run_id, {"model.mindir": model["path"], "checkpoint.ckpt": str(checkpoint),
                                  "config.yaml": str(Path(run["output_dir"], "config.yaml"))},
        lineage, metrics,
    )


def _summarize(cfg, dataset: dict, metrics: dict, run_uri: str) -> None:
    label = " — **SYNTHETIC data**" if dataset["synthetic"] else ""
    create_markdown_artifact(key="sknet-run-summary", markdown="\n".join([
        f"# sknet-train{label}",
        f"- config digest `{cfg.digest()[:12]}`, dataset digest `{dataset['digest'][:12]}`",
        f"- {cfg.gate.metric}: **{metrics[cfg.gate.metric]:.4f}** (threshold {cfg.gate.threshold:.4f})",
        f"- top-5 {metrics['top_5_accuracy']:.4f}, loss {metrics['loss']:.4f}, {metrics['samples']} samples",
        f"- run outputs: `{run_uri}`",
    ]))
    create_table_artifact(key="sknet-metrics", table=[{k: v for k, v in metrics.items()}])


if __name__ == "__main__":
    sknet_train()
