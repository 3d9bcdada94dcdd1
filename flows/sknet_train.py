"""The nightly flow: data → train → evaluate → publish run → gate → export → release.

Every task persists its result, so a retry of the same flow run (`prefect flow-run retry`) skips the
stages that finished; training itself resumes from the newest checkpoint, which is mirrored to
`<storage>/runs/<flow-run-id>/checkpoints` as it is written, so the retry may run on another machine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from sknet.config import load_config
from sknet.lineage import lineage_record
from sknet.release import release_prefix, run_prefix
from sknet.storage import store_from_config
from tasks.assets import asset_key
from tasks.credentials import use_aws_credentials_block
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
    aws_credentials_block: str | None = None,
) -> dict:
    """Train, check and ship an SKNet classifier; parameters are validated before any compute.

    Args:
        config: a shipped profile (`cifar10-ascend8`, `cpu-smoke`) or a path to a YAML config.
        overrides: dotted config keys, e.g. {"train.epochs": 1, "launch.ranks": 2}.
        dataset_uri: a staged dataset (s3://…/datasets/cifar10/<digest>) or a local layout; default `data.uri`.
        gate_threshold: minimum `gate.metric` (0–1) for a release; default `gate.threshold`.
        publish_to: storage URI for runs/ and releases/; default `storage.uri`.
        work_dir: local scratch for the dataset cache and run directories.
        aws_credentials_block: a Prefect AwsCredentials block for the bucket; default: the worker's environment.
    """
    run_id = flow_run.get_id() or "local"
    extra = {"train.output_dir": str(Path(work_dir, "runs", run_id).resolve())}
    extra |= {"data.uri": dataset_uri} if dataset_uri else {}
    extra |= {"gate.threshold": gate_threshold} if gate_threshold is not None else {}
    extra |= {"storage.uri": publish_to} if publish_to else {}
    cfg = load_config(config, {**(overrides or {}), **extra})
    if aws_credentials_block:
        use_aws_credentials_block(aws_credentials_block)
    store_uri = store_from_config(cfg.storage).uri
    checkpoints = f"{store_uri}/{run_prefix(run_id)}/checkpoints"
    cfg = cfg.override({"train.checkpoint_mirror": checkpoints})
    logger = get_run_logger()
    logger.info("config %s, digest %s; publishing to %s", config, cfg.digest()[:12], store_uri)
    seconds: dict[str, float] = {}

    with _timed(seconds, "data"):
        dataset = fetch_dataset(cfg, cache_dir=str(Path(work_dir, "cache").resolve()))
    cfg = cfg.override({"data.uri": dataset["path"]})
    with _timed(seconds, "train"):
        run = train.with_options(assets=[checkpoints], asset_deps=[asset_key(dataset["uri"])])(cfg, dataset["digest"])
    with _timed(seconds, "evaluate"):
        metrics = evaluate(cfg, run["checkpoint"])
    with _timed(seconds, "publish-run"):
        run_uri = publish_run_outputs(cfg, run_id, run["output_dir"], metrics)
    model_name = RELEASED_MODEL[cfg.model.name]
    verdict = gate_model(cfg, metrics, model_name, return_state=True)
    _summarize(cfg, dataset, metrics, run_uri, verdict)
    verdict.result()  # a miss ends the run Failed here: "gate failed: <metric> <value> < threshold <t>"
    with _timed(seconds, "export"):
        model = export(cfg, run["checkpoint"], str(Path(run["output_dir"], "model.mindir")))
    lineage = lineage_record(
        cfg, run_id=run_id, dataset_uri=dataset["uri"], dataset_digest=dataset["digest"],
        synthetic_data=dataset["synthetic"], metrics=metrics,
        artifacts={"model.mindir": model, "checkpoint.ckpt": {"step": run["step"], "sha256": run["checkpoint_sha256"]}},
    )
    release_uri = f"{store_uri}/{release_prefix(model_name, run_id)}"
    with _timed(seconds, "release"):
        pointer = publish_model_release.with_options(assets=[f"{release_uri}/model.mindir"], asset_deps=[checkpoints])(
            cfg, model_name, run_id,
            {"model.mindir": model["path"], "checkpoint.ckpt": run["checkpoint"],
             "config.yaml": str(Path(run["output_dir"], "config.yaml"))},
            lineage, metrics,
        )
    return {"release": pointer, "run_uri": run_uri, "metrics": metrics, "synthetic_data": dataset["synthetic"],
            "stage_seconds": seconds}


@contextmanager
def _timed(seconds: dict[str, float], stage: str):
    started = time.perf_counter()
    yield
    seconds[stage] = round(time.perf_counter() - started, 2)


def _summarize(cfg, dataset: dict, metrics: dict, run_uri: str, verdict) -> None:
    label = " — **SYNTHETIC data**" if dataset["synthetic"] else ""
    outcome = verdict.result(raise_on_failure=False)
    message = outcome["message"] if verdict.is_completed() else str(outcome)
    create_markdown_artifact(key="sknet-run-summary", markdown="\n".join([
        f"# sknet-train{label}",
        f"- verdict: **{'PASS' if verdict.is_completed() else 'FAIL'}** — {message}",
        f"- config digest `{cfg.digest()[:12]}`, dataset digest `{dataset['digest'][:12]}` (`{dataset['uri']}`)",
        f"- {cfg.gate.metric}: **{metrics[cfg.gate.metric]:.4f}** (threshold {cfg.gate.threshold:.4f})",
        f"- top-5 {metrics['top_5_accuracy']:.4f}, loss {metrics['loss']:.4f}, {metrics['samples']} samples",
        f"- run outputs: `{run_uri}`",
    ]))
    create_table_artifact(key="sknet-metrics", table=[dict(metrics)])


if __name__ == "__main__":
    sknet_train()
