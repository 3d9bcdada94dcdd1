"""The model card every release carries (`MODEL_CARD.md`): what the model is, what it learned from and how, how it
scored against the gate and the release before it, the digests that trace it, and what it is fit for.

The card is a function of the run (its config and lineage record) and of the release it replaced, never of the
clock, so a retried release writes the same card. Every value from data (URIs, versions, dates, digests, metrics)
goes through `sknet.markdown`: a hostile one is shown as text, never rendered, and a non-finite metric as "—".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sknet.config import Config, TrainConfig
from sknet.data.census import census_lines
from sknet.data.layout import CLASS_NAMES, MEAN, STD
from sknet.markdown import code, number, table, text
from sknet.release.gate import GatePolicy

METRICS = (("top_1_accuracy", "top-1 accuracy"), ("top_5_accuracy", "top-5 accuracy"))


def model_card(cfg: Config, lineage: Mapping, *, release: str, version: str, previous: Mapping | None) -> str:
    """Markdown for version `version` of model `release`.

    `lineage` is the release's `sknet.release.lineage.lineage_record` (dataset, metrics, digests, the exported model
    with its parameter count); `previous` the LATEST pointer the release replaces, None for the first release.
    """
    synthetic = lineage["dataset"]["synthetic"]
    return "\n\n".join([
        _title(release, version, synthetic),
        _model(cfg, lineage["artifacts"]["model.mindir"], lineage.get("exported_model")),
        _data(cfg, lineage["dataset"], lineage["metrics"]),
        _recipe(cfg),
        _evaluation(cfg, lineage["metrics"], release, previous, lineage.get("gate")),
        _per_class(lineage["metrics"], lineage.get("gate")),
        _calibration(lineage["metrics"]),
        _lineage(lineage),
        _intended_use(cfg, synthetic, lineage["metrics"]),
    ]) + "\n"


def _title(release: str, version: str, synthetic: bool) -> str:
    title = f"# Model card: {text(release)} {text(version)}"
    if not synthetic:
        return title
    return (f"{title} — SYNTHETIC data\n\n"
            "> **⚠ SYNTHETIC DATA — NOT A USABLE MODEL.** It was trained and evaluated on generated images "
            "(`sknet data synth`), not on CIFAR-10: its accuracy says nothing about real images. "
            "Use it only to test this pipeline.")


def _model(cfg: Config, model: Mapping, exported: Mapping | None = None) -> str:
    shape = text("×".join("N" if size is None else str(size) for size in model.get("input_shape", [])))
    count = model.get("parameters")
    batch = "dynamic" if model.get("dynamic_batch") else "static"
    return "\n".join([
        "## Model",
        f"- {code(cfg.model.name)}, {cfg.model.stem} stem, {cfg.model.num_classes} classes: "
        + (f"**{number(count, ',')} parameters** (trainable)" if count is not None else "parameter count not recorded"),
        f"- `model.mindir`: input {shape} float32 (NCHW, {batch} batch), output {cfg.model.num_classes} logits; "
        f"round trip checked to {number(model.get('max_abs_diff', 0), '.2g')} max abs difference",
        _exported_score(exported),
    ])


def _exported_score(exported: Mapping | None) -> str:
    """The shipped MINDIR's own score on the eval set (`sknet.evaluation.exported`), and each other runtime's."""
    if not exported:
        return "- `model.mindir` itself: not scored on the eval set (released before the exported model was scored)"
    others = "".join(
        f"; {code(other.get('runtime'))}: " + (f"skipped — {text(other['skipped'])}" if "skipped" in other else
                                               f"top-1 {number(other.get('top_1_accuracy'))}")
        for other in exported.get("other_runtimes") or [])
    return (f"- `model.mindir` itself, run through {code(exported.get('runtime'))}: top-1 "
            f"**{number(exported.get('top_1_accuracy'))}**, top-5 {number(exported.get('top_5_accuracy'))} on "
            f"{number(exported.get('samples'), ',')} test images (the checkpoint's top-1 "
            f"{number(exported.get('checkpoint_top_1_accuracy'))}, allowed difference "
            f"{number(exported.get('accuracy_tolerance'), 'g')}){others}")


def _data(cfg: Config, dataset: Mapping, metrics: Mapping) -> str:
    kind = "**SYNTHETIC** (generated images, not CIFAR-10)" if dataset["synthetic"] else "CIFAR-10 (binary layout)"
    cap = cfg.data.num_train_samples
    return "\n".join([
        "## Data",
        f"- {code(dataset['uri'])}: {kind}",
        f"- digest {code(dataset['digest'])}",
        f"- trained on {'all training images' if cap is None else f'at most {cap:,} training images'}, "
        f"evaluated on {number(metrics['samples'], ',')} test images",
        *census_lines(dataset.get("census")),
    ])


def _recipe(cfg: Config) -> str:
    t, launch = cfg.train, cfg.launch
    rows = [
        ("epochs", f"{t.epochs}"),
        ("batch size", f"{t.batch_size} per rank × {_count(launch.ranks, 'rank')} = {t.batch_size * launch.ranks}"),
        ("learning rate", _learning_rate(t)),
        ("optimizer", f"Momentum {t.momentum:g}, weight decay {t.weight_decay:g} (not on BN γ/β and biases)"),
        ("loss", f"softmax cross-entropy, label smoothing {t.label_smoothing:g}"),
        ("precision", f"amp {t.amp_level}, {t.loss_scale_mode} loss scale {t.loss_scale:g}"),
        ("image size", f"{cfg.data.image_size}×{cfg.data.image_size}"),
        ("devices", f"{_count(launch.ranks, 'rank')} on {t.device_target} ({launch.backend} launch, "
                    f"{_count(launch.nodes, 'node')})"),
        ("seed", f"{t.seed}"),
    ]
    return "\n".join(["## Training recipe", table(["setting", "value"], rows)])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _learning_rate(t: TrainConfig) -> str:
    """The schedule in words, e.g. `warm-up 5 epochs from 0.01, then warmup_poly (power 2) from 0.1 to 0`."""
    warmup = f"warm-up {t.warmup_epochs:g} epochs from {t.warmup_start_lr:g}, then " if t.warmup_epochs else ""
    if t.lr_schedule == "constant":
        return f"{warmup}constant {t.base_lr:g}"
    power = f" (power {t.poly_power:g})" if t.lr_schedule == "warmup_poly" else ""
    return f"{warmup}{t.lr_schedule}{power} from {t.base_lr:g} to {t.end_lr:g}"


def _evaluation(cfg: Config, metrics: Mapping, release: str, previous: Mapping | None,
                recorded: Mapping | None = None) -> str:
    """This release's metrics against the gate and the release it replaces (with the change). The gate's own
    verdict when it compared this model with that release sample by sample (`recorded`), else judged again."""
    before = previous.get("metrics", {}) if previous else {}
    champion = before if cfg.gate.compare_to_latest and cfg.gate.metric in before else None
    verdict = GatePolicy.of(cfg.gate).judge(metrics, champion_metrics=champion)
    paired = (recorded or {}).get("paired") or {}
    if previous and paired.get("champion") == previous.get("version"):
        verdict = replace(verdict, passed=bool(recorded.get("passed")), message=str(recorded.get("message")))
    header = ["metric", "this release", "gate"]
    if previous:
        header += [f"previous release {code(previous['version'])}", "change"]
    rows = []
    for key, label in METRICS:
        bar = f"≥ {number(cfg.gate.threshold)}" if key == cfg.gate.metric else "—"
        row = [label, f"**{number(metrics[key])}**", bar]
        if previous:
            change = number(metrics[key] - before[key], "+.4f") if key in before else "—"
            row += [number(before.get(key)), change]
        rows.append(row)
    compared = (f"- compared with {code(previous['version'])}, the LATEST release of {text(release)} before this one "
                f"(released {text(previous.get('released_at') or 'at an unrecorded time')})" if previous
                else f"- first release of {text(release)}: no previous release to compare with")
    return "\n".join(["## Evaluation", table(header, rows), "",
                      f"- gate: **{'PASS' if verdict.passed else 'FAIL'}** — {text(verdict.message)}", compared,
                      f"- loss {number(metrics['loss'])} on {number(metrics['samples'], ',')} test images"])


def _calibration(metrics: Mapping) -> str:
    """How far the model's confidence can be trusted: ECE and NLL, and each confidence bin that holds samples."""
    calibration = metrics.get("calibration")
    if not calibration:
        return "## Calibration\n\nNot recorded for this release (evaluated before calibration was measured)."
    rows = [(f"{number(b['lower'], '.2f')}–{number(b['upper'], '.2f')}", number(b["count"], ","),
             number(b["confidence"]), number(b["accuracy"])) for b in calibration["bins"] if b["count"]]
    return "\n".join([
        "## Calibration", "",
        f"Expected calibration error (15 equal-width confidence bins) **{number(calibration['ece'])}**, negative "
        f"log-likelihood {number(calibration['nll'])}: the gap between how sure the model is (its top-1 softmax "
        "probability) and how often it is right. The reliability diagram is `reliability.png` in the run's outputs.",
        "", table(["confidence", "samples", "mean confidence", "accuracy"], rows)])


def _per_class(metrics: Mapping, recorded: Mapping | None) -> str:
    """Accuracy per class (and the champion's on the same samples, when the gate compared them), then the
    confusion matrix: rows are the true classes, columns the predicted ones."""
    matrix, accuracy = metrics.get("confusion_matrix"), metrics.get("per_class_accuracy")
    if not matrix or not accuracy:
        return "## Per class\n\n- not recorded for this release"
    names = [CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"#{i}" for i in range(len(matrix))]
    paired = (recorded or {}).get("paired") or {}
    theirs = (paired.get("champion_metrics") or {}).get("per_class_accuracy")
    header = ["class", "samples", "accuracy"] + ([f"release {code(paired['champion'])}", "change"] if theirs else [])
    rows = []
    for i, name in enumerate(names):
        row = [name, number(sum(matrix[i]), ","), number(accuracy[i])]
        if theirs:
            change = accuracy[i] - theirs[i] if None not in (accuracy[i], theirs[i]) else None
            row += [number(theirs[i]), number(change, "+.4f")]
        rows.append(row)
    confusion = table(["true \\ predicted", *names], [[name, *(number(n, ",") for n in matrix[i])]
                                                      for i, name in enumerate(names)])
    return "\n".join(["## Per class", table(header, rows), "", "Confusion matrix (rows: true class, columns: "
                      "predicted class):", "", confusion])


def _lineage(lineage: Mapping) -> str:
    checkpoint, model = lineage["artifacts"]["checkpoint.ckpt"], lineage["artifacts"]["model.mindir"]
    rows = [
        ("recipe (what decides the weights), sha256", lineage["config"].get("recipe_digest", "not recorded")),
        ("config (resolved, paths included), sha256", lineage["config"]["digest"]),
        ("dataset digest", lineage["dataset"]["digest"]),
        (f"checkpoint.ckpt (step {text(checkpoint['step'])}), sha256", checkpoint["sha256"]),
        ("model.mindir, sha256", model["sha256"]),
        ("code commit", lineage["code"]["commit"]),
    ]
    return "\n".join(["## Lineage", table(["what", "digest"], [(name, code(value)) for name, value in rows]),
                      "", "The full record (resolved config, package versions) is `lineage.json` in this release."])


def _intended_use(cfg: Config, synthetic: bool, metrics: Mapping) -> str:
    if synthetic:
        return "\n".join([
            "## Intended use and limitations",
            "- **None beyond testing this pipeline.** The images it learned from were generated, not CIFAR-10: "
            "it has learned nothing about real images and must not be used for any prediction.",
        ])
    size = cfg.data.image_size
    resized = f", resized to {size}×{size}" if size != 32 else ""
    return "\n".join([
        "## Intended use and limitations",
        f"- Classifies 32×32 RGB images into the {len(CLASS_NAMES)} CIFAR-10 classes: {', '.join(CLASS_NAMES)}.",
        f"- Input: NCHW float32{resized}, scaled to [0, 1] and normalized with mean {_triple(MEAN)} "
        f"and std {_triple(STD)}.",
        f"- Measured on {number(metrics['samples'], ',')} CIFAR-10 test images only; not validated for other domains, "
        "resolutions or classes. Images unlike CIFAR-10's get one of its ten labels all the same.",
    ])


def _triple(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"
