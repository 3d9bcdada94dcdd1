"""What a finished stage leaves behind, gathered for the next one: the training outcome, the run's published
outputs (`runs/<id>/`) and the release (`releases/<model>/<version>/`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from sknet.config import Config
from sknet.errors import CheckpointError, SknetError
from sknet.evaluation.figures import figures_markdown, plot_confusion_matrix, plot_reliability
from sknet.plan import RunPlan
from sknet.release import (
    LINEAGE,
    MODEL_CARD,
    BeatLatest,
    latest_release,
    publish_release,
    publish_run,
    release_prefix,
)
from sknet.release.champion import ChampionUnavailable, pair_with_latest
from sknet.release.gate import GatePolicy, Verdict, enforce
from sknet.release.history import release_facts
from sknet.release.lineage import lineage_record
from sknet.release.model_card import model_card
from sknet.release.training_key import release_with_key, training_key
from sknet.report import plot_training_curve, read_metrics
from sknet.run_files import (
    CHAMPION_DIR,
    CONFIG_FILE,
    CONFUSION_FILE,
    CURVE_FILE,
    EVAL_FILE,
    LAUNCH_FILE,
    LOGS_DIR,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RELIABILITY_FILE,
    RESULT_FILE,
)
from sknet.storage import join, store_from_config
from sknet.training.checkpoint import latest_verified_checkpoint, read_record

RUN_FILES = (EVAL_FILE, PREDICTIONS_FILE, CURVE_FILE, CONFUSION_FILE, RELIABILITY_FILE, CONFIG_FILE, METRICS_FILE,
             LAUNCH_FILE)

log = logging.getLogger(__name__)


def training_outcome(launched: Mapping, output_dir: str | Path) -> dict:
    """The launcher's result plus the newest checkpoint (path, step, sha256) and the last logged loss.

    On a node without rank 0 (several nodes, one job) there is no checkpoint: `holds_rank_zero` is False
    and the node's part is done.
    """
    if 0 not in launched.get("local_ranks", [0]):
        return {**launched, "holds_rank_zero": False, "checkpoint": None, "checkpoint_sha256": None,
                "step": None, "final_loss": None}
    _check_complete(Path(output_dir))
    newest = latest_verified_checkpoint(output_dir)
    if newest is None:
        raise CheckpointError(f"training finished but {output_dir}/checkpoints holds no checkpoint")
    step, checkpoint = newest
    losses = [r["loss"] for r in read_metrics(output_dir) if r["event"] == "step"]
    return {**launched, "holds_rank_zero": True, "checkpoint": str(checkpoint),
            "checkpoint_sha256": read_record(checkpoint)["sha256"], "step": step,  # just verified
            "final_loss": losses[-1] if losses else None}


class IncompleteTraining(SknetError):
    """The ranks exited, but the training did not run to its last step: nothing of it is evaluated or released."""


def _check_complete(output_dir: Path) -> None:
    """Rank 0's result.json must say the run reached its last step with a finite loss."""
    try:
        result = json.loads((output_dir / RESULT_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompleteTraining(f"training left no readable {output_dir / RESULT_FILE} ({exc})") from None
    if result.get("complete") is not True:
        raise IncompleteTraining(
            f"training in {output_dir} is not complete (step {result.get('steps')} of "
            f"{result.get('epochs')} epochs, final loss {result.get('final_loss')}): nothing is evaluated or "
            "released; see result.json and the rank logs")


def publish_run_outputs(cfg: Config, plan: RunPlan, metrics: Mapping) -> str:
    """Metrics, predictions, training curve, confusion matrix, config, metrics log and rank logs to `runs/<id>/`,
    whatever the gate says."""
    run = Path(plan.output_dir)
    (run / EVAL_FILE).write_text(json.dumps(dict(metrics), indent=2) + "\n")
    plot_training_curve(read_metrics(run), run / CURVE_FILE, title=(
        f"{cfg.model.name}: top-1 {metrics['top_1_accuracy']:.4f}, top-5 {metrics['top_5_accuracy']:.4f}"),
        metrics=metrics)  # the figure adds "(SYNTHETIC data)" from metrics["synthetic_data"]
    plot_confusion_matrix(metrics, run / CONFUSION_FILE, title=f"{cfg.model.name}: confusion matrix on "
                          f"{metrics['samples']:,} test images" + (" (SYNTHETIC data)" if metrics.get(
                              "synthetic_data") else ""))
    plot_reliability(metrics, run / RELIABILITY_FILE, title=f"{cfg.model.name}: calibration on "
                     f"{metrics['samples']:,} test images")
    files = {name: run / name for name in RUN_FILES}
    files.update({f"{LOGS_DIR}/{p.name}": p for p in (run / LOGS_DIR).glob("*.log")})
    publish_run(store_from_config(cfg.storage), plan.run_id, {k: p for k, p in files.items() if p.exists()},
                metadata={"metrics": dict(metrics)})
    return plan.run_uri


def run_figures(cfg: Config, plan: RunPlan, run_uri: str) -> str:
    """Markdown embedding the run's curve and confusion matrix PNGs, each with the URI of its stored copy."""
    run = Path(plan.output_dir)
    return figures_markdown(f"{cfg.model.name} {plan.run_id}", [
        (run / CURVE_FILE, "training curves", f"{run_uri}/{CURVE_FILE}"),
        (run / CONFUSION_FILE, "confusion matrix", f"{run_uri}/{CONFUSION_FILE}"),
        (run / RELIABILITY_FILE, "reliability diagram", f"{run_uri}/{RELIABILITY_FILE}")])


def unchanged_release(cfg: Config, plan: RunPlan, dataset: Mapping) -> dict | None:
    """The release this run would repeat: one of `plan.model` with this run's training key (same dataset,
    training settings, epochs and code), other than this run's own version; None if there is none."""
    return release_with_key(store_from_config(cfg.storage), plan.model, training_key(cfg, dataset["digest"]),
                            other_than=plan.run_id)


def gate_against_latest(cfg: Config, metrics: Mapping, model: str) -> Verdict:
    """The gate's verdict (raises `GateFailed` on a miss); with gate.compare_to_latest, the release must be beaten.

    LATEST's checkpoint is scored on this run's eval samples and compared with this run's predictions sample by
    sample (`sknet.release.champion`: McNemar's exact test, gate.mode, gate.significance, gate.max_class_drop); when it
    cannot be (another model, no checkpoint, no predictions here), the verdict says why and judges by gate.margin.
    LATEST is read here, before export, and the flow caches this verdict: `release_model` judges the
    model against LATEST again right before moving it, so a release published meanwhile is beaten too.
    """
    champion, paired, fallback = None, None, ""
    if cfg.gate.compare_to_latest:
        store = store_from_config(cfg.storage)
        if current := latest_release(store, model):
            champion = current.get("metrics")
            run = Path(cfg.train.output_dir)
            try:
                paired = pair_with_latest(cfg, store, model, current, run / PREDICTIONS_FILE, run / CHAMPION_DIR)
            except ChampionUnavailable as exc:
                fallback = f"release {current['version']} not scored on this run's samples: {exc}"
                log.warning("%s; judged by gate.margin instead", fallback)
    return enforce(GatePolicy.of(cfg.gate).judge(metrics, champion_metrics=champion, paired=paired,
                                                 fallback=fallback))


def regate_release(cfg: Config, release: Mapping, model: str) -> Verdict:
    """The verdict on the release an unchanged run would repeat (its recorded metrics), by this run's gate: a
    gate-only change (threshold, compare_to_latest, margin) is judged, never passed as "unchanged". With
    gate.compare_to_latest the release must beat LATEST, unless it is LATEST. Raises `GateFailed` on a miss."""
    champion = None
    if cfg.gate.compare_to_latest and not release.get("latest"):
        current = latest_release(store_from_config(cfg.storage), model)
        champion = current.get("metrics") if current else None
    return enforce(GatePolicy.of(cfg.gate).judge(dict(release.get("metrics") or {}), champion_metrics=champion))


def release_model(cfg: Config, plan: RunPlan, dataset: Mapping, run: Mapping, metrics: Mapping,
                  model: Mapping, verdict: Mapping | None = None, *,
                  run_url: str | None = None) -> tuple[dict, dict, str]:
    """Publish MINDIR, checkpoint, config, lineage and model card as version `plan.run_id` (its manifest records
    the metrics, the exported model's own score and the training key, `sknet.release.training_key`), then move LATEST.

    The model card (`sknet.release.model_card`) compares the model with LATEST as read before the upload. LATEST
    moves only forwards: never to an older release, and with gate.compare_to_latest only past a LATEST
    this model beats at release time; else `sknet.release.LatestNotMoved` (the version stays published).
    Returns (the LATEST pointer written, the lineage record, the model card as published).
    """
    lineage = lineage_record(
        cfg, run_id=plan.run_id, dataset_uri=dataset["uri"], dataset_digest=dataset["digest"],
        synthetic_data=dataset["synthetic"], metrics=metrics, exported_model=model.get("exported_model"),
        dataset_census=dataset.get("census"),
        artifacts={"model.mindir": {k: v for k, v in model.items() if k != "exported_model"},
                   "checkpoint.ckpt": {"step": run["step"], "sha256": run["checkpoint_sha256"]}},
    )
    if verdict:
        lineage["gate"] = dict(verdict)  # the evidence the release passed on (a paired comparison's p-value, …)
    lineage_path = Path(model["path"]).with_name(LINEAGE)
    lineage_path.write_text(json.dumps(lineage, indent=2) + "\n")
    files = {"model.mindir": Path(model["path"]), "checkpoint.ckpt": Path(run["checkpoint"]),
             CONFIG_FILE: Path(plan.output_dir, CONFIG_FILE), LINEAGE: lineage_path}

    def card_against(latest: dict | None) -> dict[str, Path]:
        card = lineage_path.with_name(MODEL_CARD)
        card.write_text(model_card(cfg, lineage, release=plan.model, version=plan.run_id, previous=latest))
        return {MODEL_CARD: card}

    store = store_from_config(cfg.storage)
    judged = ((verdict or {}).get("paired") or {}).get("champion")  # compared sample by sample: that verdict stands
    beat = BeatLatest(cfg.gate.metric, cfg.gate.margin, judged) if cfg.gate.compare_to_latest else None
    pointer = publish_release(store, plan.model, plan.run_id, files,
                              metadata={"metrics": dict(metrics), "lineage_digest": lineage["config"]["digest"],
                                        "exported_model": lineage["exported_model"],
                                        **({"gate": dict(verdict)} if verdict else {}),
                                        "training_key": training_key(cfg, dataset["digest"]),
                                        **release_facts(plan.flow_run_id, run_url, dataset)},  # for its LATEST moves
                              beat_latest=beat, against_latest=card_against, file_facts={  # hashed already
                                  "model.mindir": {"sha256": model["sha256"]},
                                  "checkpoint.ckpt": {"sha256": run["checkpoint_sha256"]}}, holder=plan.flow_run_id)
    card = store.get_bytes(join(release_prefix(plan.model, plan.run_id), MODEL_CARD)).decode()
    return pointer, lineage, card  # the stored card: a retry's own one is not uploaded over it


def release_pages(cfg: Config, model_name: str, pointer: Mapping, lineage: Mapping) -> dict[str, str]:
    """The release as pages a browser shows (the UI cannot open a `file://` or `s3://` link): for model.mindir,
    lineage.json and manifest.json, their key facts as tables with each object's storage URI as text. Keyed by
    the file's name; values from the release are escaped (`sknet.markdown`)."""
    from sknet.markdown import code, number, table, text
    from sknet.storage import read_manifest

    store = store_from_config(cfg.storage)
    prefix = release_prefix(model_name, pointer["version"])
    manifest = read_manifest(store, prefix)
    files = manifest.get("files", {})
    where = f"{pointer['uri']}/"
    model = lineage["artifacts"]["model.mindir"]
    exported = lineage.get("exported_model") or {}
    title = f"{text(model_name)} {text(pointer['version'])}"

    def page(name: str, rows: list[tuple[str, str]], note: str = "") -> str:
        return "\n".join([f"# {title}: {text(name)}", "", f"Stored at {code(where + name)}", "",
                          table(["", ""], rows), *(["", note] if note else [])]) + "\n"

    model_rows = [("bytes", number(files.get("model.mindir", {}).get("size"), ",")),
                  ("sha256", code(model.get("sha256", "—"))),
                  ("exported model's top-1 / top-5", f"{number(exported.get('top_1_accuracy'))} / "
                                                      f"{number(exported.get('top_5_accuracy'))}"),
                  ("batch size (export.batch_size)", text(cfg.export.batch_size)),
                  ("from checkpoint (step)", text(lineage["artifacts"]["checkpoint.ckpt"].get("step")))]
    config = lineage["config"]
    lineage_rows = [("run id", code(lineage["run_id"])), ("created", text(lineage["created_at"])),
                    ("dataset", code(lineage["dataset"]["uri"])),
                    ("dataset digest", code(lineage["dataset"]["digest"])),
                    ("synthetic data", text("yes" if lineage["dataset"]["synthetic"] else "no")),
                    ("recipe digest", code(config.get("recipe_digest", "—"))),
                    ("resolved config digest", code(config["digest"])),
                    ("top-1 / top-5", f"{number(lineage['metrics'].get('top_1_accuracy'))} / "
                                      f"{number(lineage['metrics'].get('top_5_accuracy'))}"),
                    ("code commit", code(lineage["code"]["commit"])),
                    ("packages", text(", ".join(f"{k} {v}" for k, v in lineage["code"]["packages"].items())))]
    file_rows = [(code(name), f"{number(entry.get('size'), ',')} bytes, sha256 {code(str(entry.get('sha256'))[:16])}…")
                 for name, entry in sorted(files.items())]
    manifest_rows = [*file_rows, ("released at", text(manifest.get("released_at", "—"))),
                     ("training key", code(str(manifest.get("training_key", "—"))[:16]))]
    return {"model.mindir": page("model.mindir", model_rows),
            "lineage.json": page("lineage.json", lineage_rows, "The full record (resolved config) is the file itself."),
            "manifest.json": page("manifest.json", manifest_rows, "A release is complete when every file listed "
                                  "here is stored at its size and sha256 (`sknet release ls --verify`).")}
