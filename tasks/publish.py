from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.assets import materialize
from prefect.runtime import flow_run

from sknet.config import Config
from sknet.evaluation.evaluate import headline
from sknet.plan import RunPlan
from sknet.release.events import release_event
from sknet.run_outputs import publish_run_outputs, release_model, release_pages, run_figures
from tasks._support import describe_assets, retry_transient, send_confirmed


@task(name="publish-run", task_run_name="publish runs/{plan.run_id}", persist_result=True, **retry_transient())
def publish_run(cfg: Config, plan: RunPlan, metrics: dict) -> str:
    """Metrics, training curve, config and logs of this run, kept in runs/<id>/ whatever the gate says."""
    uri = publish_run_outputs(cfg, plan, metrics)
    create_markdown_artifact(key="sknet-curve", markdown=run_figures(cfg, plan, uri),
                             description="training curves and confusion matrix (the PNGs are in the run's outputs)")
    get_run_logger().info("run outputs in %s", uri)
    return uri


# The asset key is bound per run by the flow: .with_options(assets=[<release>/model.mindir], asset_deps=[ckpt]).
@materialize("sknet://release", name="publish-release", task_run_name="release {plan.model} {plan.run_id}",
             persist_result=True, **retry_transient())
def publish_release(cfg: Config, plan: RunPlan, dataset: dict, run: dict, metrics: dict, model: dict,
                    verdict: dict | None = None) -> dict:
    """Upload, verify, write the manifest, then move LATEST (recording the move, with this flow run's URL, and
    emitting `sknet.release.published`); the model card and links to the objects in the UI."""
    pointer, lineage, card = release_model(cfg, plan, dataset, run, metrics, model, verdict, run_url=flow_run.ui_url)
    send_confirmed(release_event(plan.store_uri, plan.model, pointer))  # sknet.release.published, received
    create_markdown_artifact(markdown=card, key="sknet-model-card", description=f"{plan.model} {plan.run_id}")
    # content, not file:// links a browser refuses
    for name, page in release_pages(cfg, plan.model, pointer, lineage).items():
        create_markdown_artifact(markdown=page, key=f"sknet-release-{name.split('.')[0]}",
                                 description=f"{plan.model} {plan.run_id}: {name}")
    describe_assets({"version": plan.run_id, "sha256": model["sha256"], "dataset_digest": dataset["digest"],
                     "config_digest": lineage["config"]["digest"],
                     **{k: v for k, v in headline(metrics).items() if k.endswith("accuracy")}})
    get_run_logger().info("released %s; LATEST → %s", pointer["uri"], plan.run_id)
    return pointer
