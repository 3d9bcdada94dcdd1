"""What a run looks like to a human: progress parsed from rank output, per-epoch rows, a PNG loss curve."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from sknet.run_files import METRICS_FILE
from sknet.train_log import parse_step_line


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
    """One row per finished epoch: epoch, last step, mean loss, images/s, seconds."""
    return [{"epoch": r["epoch"], "step": r["step"], "mean_loss": None if r["loss"] is None else round(r["loss"], 4),
             "images_per_sec": r["images_per_sec"], "seconds": r["seconds"]}
            for r in records if r["event"] == "epoch"]


def plot_training_curve(records: list[dict], out: str | Path, *, title: str, size=(720, 400)) -> Path:
    """Loss per logged step (line) and per epoch (dots) as a PNG, with `title` (e.g. eval accuracy) on top."""
    from PIL import Image, ImageDraw

    finite = [r for r in records if r["loss"] is not None]  # a diverged step's loss is logged as null
    steps = [(r["step"], r["loss"]) for r in finite if r["event"] == "step"]
    epochs = [(r["step"], r["loss"]) for r in finite if r["event"] == "epoch"]
    width, height = size
    left, right, top, bottom = 60, 20, 40, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="gray")
    points = steps + epochs
    if points:
        max_step = max(s for s, _ in points) or 1
        low, high = min(v for _, v in points), max(v for _, v in points)
        span = (high - low) or 1.0

        def xy(step: float, loss: float) -> tuple[float, float]:
            x = left + (width - left - right) * step / max_step
            y = height - bottom - (height - top - bottom) * (loss - low) / span
            return x, y

        if len(steps) > 1:
            draw.line([xy(s, v) for s, v in steps], fill=(31, 119, 180), width=2)
        for s, v in epochs:
            x, y = xy(s, v)
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(214, 39, 40))
        draw.text((4, top), f"{high:.3f}", fill="black")
        draw.text((4, height - bottom - 10), f"{low:.3f}", fill="black")
        draw.text((width - right - 60, height - bottom + 8), f"step {max_step}", fill="black")
    draw.text((left, height - bottom + 8), "loss per step (line), per epoch (dots)", fill="black")
    out = Path(out)
    image.save(out, format="PNG")
    return out


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
    """The run's summary in markdown: gate outcome, digests, metrics against the threshold, where outputs are."""
    label = " — **SYNTHETIC data**" if dataset["synthetic"] else ""
    return "\n".join([
        f"# sknet-train{label}",
        f"- gate: **{'PASS' if passed else 'FAIL'}** — {message}",
        f"- config digest `{cfg.digest()[:12]}`, dataset digest `{dataset['digest'][:12]}` (`{dataset['uri']}`)",
        f"- {cfg.gate.metric}: **{metrics[cfg.gate.metric]:.4f}** (threshold {cfg.gate.threshold:.4f})",
        f"- top-5 {metrics['top_5_accuracy']:.4f}, loss {metrics['loss']:.4f}, {metrics['samples']} samples",
        f"- run outputs: `{run_uri}`",
    ])
