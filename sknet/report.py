"""What a run looks like to a human: progress parsed from rank output, per-epoch rows, a PNG of the training
curves (matplotlib, Agg canvas)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from sknet.markdown import code, number, text
from sknet.run_files import METRICS_FILE
from sknet.training.run_record import recipe_digest
from sknet.training.train_log import parse_step_line


def progress_of(line: str) -> tuple[int, int, float] | None:
    """(step, total steps, loss) from a training log line such as `epoch 1/3 step 5/60 loss 2.31 …`."""
    found = parse_step_line(line)
    return (found.step, found.total_steps, found.loss) if found else None


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The records of `<output_dir>/metrics.jsonl`, oldest first ([] before the first logged step)."""
    path = Path(output_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def epoch_rows(records: list[dict]) -> list[dict]:
    """One row per finished epoch: epoch, last step, mean loss, images/s, seconds, the steps an overflow skipped
    and the loss scale at the epoch's end (None in logs written before they were recorded)."""
    return [{"epoch": r["epoch"], "step": r["step"], "mean_loss": None if r["loss"] is None else round(r["loss"], 4),
             "images_per_sec": r["images_per_sec"], "seconds": r["seconds"],
             "skipped_steps": r.get("skipped_steps"), "loss_scale": r.get("loss_scale")}
            for r in records if r["event"] == "epoch"]


PANELS = ("loss", "learning rate", "images/s", "evaluation", "loss scale", "skipped steps")
LOSS_COLOR, EPOCH_COLOR, LR_COLOR, SPEED_COLOR = "#1f77b4", "#d62728", "#2ca02c", "#9467bd"
TOP1_COLOR, TOP5_COLOR, SCALE_COLOR, SKIPPED_COLOR = "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"
DEFAULT_SIZE = (1200, 1050)
EMPTY_TEXT = "no steps logged yet"


def plot_training_curve(records: list[dict], out: str | Path, *, title: str, size=DEFAULT_SIZE,
                        metrics: Mapping | None = None, synthetic: bool | None = None) -> Path:
    """A PNG of `size` pixels with six panels: loss per logged step (line) and per epoch (dots), learning
    rate and images/s per step, the eval top-1/top-5 of `metrics` (when given), the loss scale per step and the
    steps an overflow skipped per epoch. `title` is on top, marked
    SYNTHETIC when `synthetic` (default: `metrics["synthetic_data"]`) and it does not say so already."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = training_figure(records, title=title, size=size, metrics=metrics, synthetic=synthetic)
    out = Path(out)
    FigureCanvasAgg(figure).print_png(out)  # no pyplot: no global backend or figure registry is touched
    return out


def training_figure(records: list[dict], *, title: str, size=DEFAULT_SIZE, metrics: Mapping | None = None,
                    synthetic: bool | None = None):
    """The matplotlib Figure `plot_training_curve` saves (Agg-renderable, never registered with pyplot)."""
    from matplotlib.figure import Figure

    if synthetic is None:
        synthetic = bool(metrics and metrics.get("synthetic_data"))
    if synthetic and "SYNTHETIC" not in title:
        title = f"{title} (SYNTHETIC data)"
    figure = Figure(figsize=(size[0] / 100, size[1] / 100), dpi=100, layout="constrained")
    figure.suptitle(title, fontsize=13, color="#b00000" if synthetic else "black")
    if not records:
        figure.text(0.5, 0.5, EMPTY_TEXT, ha="center", va="center", fontsize=16, color="gray")
        return figure
    axes = figure.subplots(3, 2, sharex=True).flat
    loss_ax, lr_ax, speed_ax, eval_ax, scale_ax, skipped_ax = axes
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    _plot_loss(loss_ax, steps, epochs)
    _plot_series(lr_ax, steps, "lr", "learning rate", LR_COLOR)
    _plot_series(speed_ax, steps, "images_per_sec", "images/s", SPEED_COLOR)
    _plot_eval(eval_ax, metrics, max((r["step"] for r in records), default=0))
    _plot_series(scale_ax, steps, "loss_scale", "loss scale", SCALE_COLOR)
    if scale_ax.lines and scale_ax.lines[0].get_xdata().size:
        scale_ax.set_yscale("log", base=2)  # a dynamic scale moves by factors of 2
    _plot_skipped(skipped_ax, epochs)
    for ax in (scale_ax, skipped_ax):
        ax.set_xlabel("step")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return figure


def _plot_loss(ax, steps: list[dict], epochs: list[dict]) -> None:
    """Finite step losses as a line, epoch means as dots, and a dashed red mark at each null (diverged) loss."""
    ax.set_title("loss per step (line), per epoch (dots)")
    ax.set_ylabel("loss")
    xs, ys = _xy(steps, "loss")
    ax.plot(xs, ys, color=LOSS_COLOR, lw=1.5, marker="o" if len(xs) == 1 else None, ms=4, label="step")
    ax.plot(*_xy(epochs, "loss"), "o", color=EPOCH_COLOR, ms=7, label="epoch mean")
    diverged = [r["step"] for r in steps + epochs if r.get("loss") is None]
    for i, step in enumerate(sorted(set(diverged))):
        ax.axvline(step, color=EPOCH_COLOR, ls="--", lw=1, label="loss null (diverged)" if i == 0 else None)
    ax.legend(loc="upper right", fontsize=8)


def _plot_series(ax, steps: list[dict], key: str, label: str, color: str) -> None:
    """One per-step quantity as a line, or 'not logged' when no step record carries it."""
    ax.set_title(f"{label} per step")
    ax.set_ylabel(label)
    xs, ys = _xy(steps, key)
    ax.plot(xs, ys, color=color, lw=1.5)
    if not xs:
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="gray")


def _plot_eval(ax, metrics: Mapping | None, last_step: int) -> None:
    """Top-1 and top-5 accuracy of the final evaluation: a marker at the last step and a dotted level line."""
    ax.set_title("evaluation accuracy")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    for key, label, color in (("top_1_accuracy", "top-1", TOP1_COLOR), ("top_5_accuracy", "top-5", TOP5_COLOR)):
        if metrics and metrics.get(key) is not None:
            value = float(metrics[key])
            ax.axhline(value, color=color, ls=":", lw=1.5)
            ax.plot([last_step], [value], "D", color=color, ms=9, label=f"{label} {value:.4f}")
    if ax.lines:
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "not evaluated", transform=ax.transAxes, ha="center", va="center", color="gray")


def _plot_skipped(ax, epochs: list[dict]) -> None:
    """The steps whose update an overflow skipped, one bar per epoch at its last step."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title("steps skipped on overflow, per epoch")
    ax.set_ylabel("skipped steps")
    xs, ys = _xy(epochs, "skipped_steps")
    spacing = min((b - a for a, b in zip(xs, xs[1:], strict=False)), default=xs[0] if xs else 1)
    ax.bar(xs, ys, width=0.6 * spacing, color=SKIPPED_COLOR)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not xs:
        ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center", color="gray")
    elif not any(ys):  # a flat empty panel with a ±0.045 axis reads like a broken plot: say it
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "none: no step overflowed", transform=ax.transAxes, ha="center", va="center",
                color="gray")


def _xy(records: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the records whose `key` is logged and not null."""
    kept = [r for r in records if r.get(key) is not None]
    return [r["step"] for r in kept], [r[key] for r in kept]


class ProgressTracker:
    """Passes each rank output line to `log` and calls `update(percent, description)` when training moves
    on by a whole percent (at most 100 updates a run, whatever the log rate). Thread-safe."""

    def __init__(self, log: Callable[[str], None], update: Callable[[int, str], None]):
        self.log, self.update = log, update
        self.percent, self._lock = 0, threading.Lock()

    def __call__(self, line: str) -> None:
        self.log(line)
        if (found := progress_of(line)) is None:
            return
        step, total, loss = found
        percent = int(100 * step / total)
        with self._lock:
            if percent <= self.percent:
                return
            self.percent = percent
        self.update(percent, f"step {step}/{total}, loss {loss:.4f}")


def run_summary(cfg, dataset: Mapping, metrics: Mapping, run_uri: str, *, passed: bool, message: str) -> str:
    """The run's summary in markdown: gate outcome, digests, metrics against the threshold, where outputs are
    (values escaped with `sknet.markdown`, a non-finite metric shown as "—")."""
    label = " — **SYNTHETIC data**" if dataset["synthetic"] else ""
    return "\n".join([
        f"# sknet-train{label}",
        f"- gate: **{'PASS' if passed else 'FAIL'}** — {text(message)}",
        f"- recipe digest `{recipe_digest(cfg)[:12]}` (what decides the weights), resolved config digest "
        f"`{cfg.digest()[:12]}` (paths included), dataset digest {code(dataset['digest'][:12])} "
        f"({code(dataset['uri'])})",
        f"- {text(cfg.gate.metric)}: **{number(metrics[cfg.gate.metric])}** (threshold {number(cfg.gate.threshold)})",
        f"- top-5 {number(metrics['top_5_accuracy'])}, loss {number(metrics['loss'])}, "
        f"{number(metrics['samples'], ',')} samples",
        f"- run outputs: {code(run_uri)}",
    ])
