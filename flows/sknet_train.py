"""The nightly flow: (preflight on Ascend →) data → train → evaluate → publish run → gate → export → release.

When a release was already trained from the same dataset, training settings, epochs and code (its training
key, `sknet.release.training_key`), the run stops after fetching the dataset: `unchanged since release <version>`.

Every task persists its result, so a retry of the same flow run (`prefect flow-run retry`) skips the
stages that finished; training itself resumes from the newest checkpoint, which is mirrored to
`<storage>/runs/<flow-run-id>/checkpoints` as it is written, so the retry may run on another machine.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from sknet.evaluation.evaluate import headline
from sknet.markdown import finite_or_dash
from sknet.plan import plan_run
from sknet.release.training_key import unchanged_summary
from sknet.report import run_summary
from sknet.run_outputs import unchanged_release
from sknet.training.run_record import recipe_digest
from tasks._support import asset_key, refuse_untemplated, tag_flow_run, use_aws_credentials_block
from tasks.data import fetch_dataset
from tasks.evaluate import evaluate
from tasks.export import export
from tasks.gate import gate_model, regate
from tasks.preflight import preflight
from tasks.publish import publish_release, publish_run
from tasks.train import train


@flow(name="sknet-train")
def sknet_train(
    config: str = "cifar10-ascend8",
    overrides: dict | None = None,
    dataset_uri: str | None = None,
    gate_threshold: float | None = None,
    publish_to: str | None = None,
    work_dir: str = "work",
    aws_credentials_block: str | None = None,
    run_id: str | None = None,
    force: bool = False,
) -> dict:
    """Train, check and ship an SKNet classifier; parameters are validated before any compute.

    Args:
        config: a shipped profile (`cifar10-ascend8`, `cpu-smoke`) or a path to a YAML config.
        overrides: dotted config keys, e.g. {"train.epochs": 1, "launch.ranks": 2}.
        dataset_uri: a staged dataset (s3://…/datasets/cifar10/<digest>) or a local layout; default `data.uri`.
        gate_threshold: minimum `gate.metric` (0–1) for a release; default `gate.threshold`.
        publish_to: storage URI for runs/ and releases/; default `storage.uri`.
        work_dir: local scratch for the dataset cache, run directories and preflight.
        aws_credentials_block: a Prefect AwsCredentials block for the bucket; default: the worker's environment.
        run_id: names the run's directory, checkpoint mirror and release version: one path segment, [A-Za-z0-9._-]+;
            default: this flow run's id. Several nodes of one job (launch.nodes > 1) share it, one flow run each.
        force: train even if a release already has this run's training key (see `unchanged_since`).
    """
    refuse_untemplated(dataset_uri=dataset_uri, publish_to=publish_to, work_dir=work_dir)
    cfg, plan = plan_run(config, overrides, run_id=run_id, flow_run_id=flow_run.get_id(), work_dir=work_dir,
                         dataset_uri=dataset_uri, gate_threshold=gate_threshold, publish_to=publish_to)
    if aws_credentials_block:
        use_aws_credentials_block(aws_credentials_block)
    _announce(config, cfg, plan)
    if cfg.train.device_target == "Ascend":  # NPUs, driver, links, plan: a broken host fails in the first minute
        preflight(cfg, work_dir)
    seconds: dict[str, float] = {}
    with _timed(seconds, "data"):
        dataset = fetch_dataset(cfg, plan.cache_dir)
    if not force and (previous := unchanged_release(cfg, plan, dataset)):
        return _unchanged(cfg, plan, previous, dataset, seconds)
    # every later stage reads the verified local copy: ranks never download, eval/export see the checked bytes
    cfg = cfg.override({"data.uri": dataset["path"]})
    with _timed(seconds, "train"):
        run = train.with_options(assets=[plan.checkpoint_mirror], asset_deps=[asset_key(dataset["uri"])])(
            cfg, dataset["digest"])
    if not run["holds_rank_zero"]:  # another node of this job holds rank 0: it evaluates and releases
        return _other_node(plan, dataset, run, seconds)
    with _timed(seconds, "evaluate"):
        metrics = evaluate(cfg, run["checkpoint"])
    with _timed(seconds, "publish-run"):
        run_uri = publish_run(cfg, plan, metrics)
    gate_state = gate_model(cfg, metrics, plan.model, return_state=True)
    _summarize(cfg, dataset, metrics, run_uri, gate_state)
    verdict = gate_state.result()  # a miss ends the run Failed here: "gate failed: <metric> <value> < threshold <t>"
    with _timed(seconds, "export"):
        model = export(cfg, run["checkpoint"], plan.model_path, metrics)
    with _timed(seconds, "release"):
        pointer = publish_release.with_options(assets=[f"{plan.release_uri}/model.mindir"],
                                               asset_deps=[plan.checkpoint_mirror])(
            cfg, plan, dataset, run, metrics, model, verdict)
    return {"release": pointer, "run_uri": run_uri, "metrics": metrics, "synthetic_data": dataset["synthetic"],
            "stage_seconds": seconds}


def _announce(config: str, cfg, plan) -> None:
    """The run's recipe and where it publishes, in its log; its tags set to what it runs (not the deployment's)."""
    get_run_logger().info("config %s: recipe digest %s (resolved config %s); publishing to %s", config,
                          recipe_digest(cfg)[:12], cfg.digest()[:12], plan.store_uri)
    tag_flow_run(config, cfg.train.device_target)


@contextmanager
def _timed(seconds: dict[str, float], stage: str):
    started = time.perf_counter()
    yield
    seconds[stage] = round(time.perf_counter() - started, 2)


def _other_node(plan, dataset: dict, run: dict, seconds: dict[str, float]) -> dict:
    """The result of a node that trained its ranks of a multi-node job without rank 0."""
    return {"release": None, "run_uri": plan.run_uri, "metrics": None, "synthetic_data": dataset["synthetic"],
            "stage_seconds": seconds, "local_ranks": run["local_ranks"]}


def _unchanged(cfg, plan, release: dict, dataset: dict, seconds: dict[str, float]) -> dict:
    """The result of a run that trains nothing: `release` has its training key. Re-gated by this run's gate
    (a miss fails the run), logged and summarized."""
    regate(cfg, release, plan.model)
    get_run_logger().info("unchanged since release %s (%s): same dataset, training settings, epochs and code; "
                          "nothing trained, LATEST not moved (force=True trains anyway)", release["version"],
                          release["uri"])
    create_markdown_artifact(key="sknet-run-summary",
                             markdown=unchanged_summary(release, dataset, release["training_key"]))
    return {"unchanged_since": release["version"], "release": None, "run_uri": None, "metrics": release["metrics"],
            "synthetic_data": dataset["synthetic"], "stage_seconds": seconds}


def _summarize(cfg, dataset: dict, metrics: dict, run_uri: str, gate_state) -> None:
    """The run's summary and metrics artifacts, written before a gate miss fails the run (a non-finite metric as
    "—": Prefect stores NaN as null and ±inf as `Infinity`, which is not JSON)."""
    outcome = gate_state.result(raise_on_failure=False)
    message = outcome["message"] if gate_state.is_completed() else str(outcome)
    create_markdown_artifact(key="sknet-run-summary", markdown=run_summary(
        cfg, dataset, metrics, run_uri, passed=gate_state.is_completed(), message=message))
    create_table_artifact(key="sknet-metrics", table=[{k: finite_or_dash(v) for k, v in headline(metrics).items()}])


if __name__ == "__main__":
    sknet_train()
