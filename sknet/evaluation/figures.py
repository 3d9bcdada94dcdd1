"""Figures a person looks at in the Prefect UI: the confusion matrix as a PNG, and markdown that embeds PNGs as
`data:image/png;base64,…` images (the UI renders those; it cannot open a `file://` or `s3://` link)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path

from sknet.data.layout import CLASS_NAMES
from sknet.markdown import code, text

EMBED_LIMIT_BYTES = 1_000_000  # a larger PNG is linked, not embedded: an artifact is stored in the API's database


def plot_confusion_matrix(metrics: Mapping, out: str | Path, *, title: str) -> Path | None:
    """A PNG of `metrics["confusion_matrix"]` (rows: true class, columns: predicted; each cell its count, shaded
    by the share of its row) with each class's accuracy in its label; None when the metrics have no matrix."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = metrics.get("confusion_matrix")
    if not matrix:
        return None
    n = len(matrix)
    names = [CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"#{i}" for i in range(n)]
    shares = [[count / max(1, sum(row)) for count in row] for row in matrix]
    accuracy = metrics.get("per_class_accuracy") or [None] * n
    figure = Figure(figsize=(8, 7), dpi=100, layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    labels = [f"{name} ({'—' if a is None else f'{a:.1%}'})" for name, a in zip(names, accuracy, strict=False)]
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (accuracy)")
    figure.suptitle(title)  # over the whole figure: an axes title is clipped by the colour bar beside it
    figure.colorbar(image, ax=ax, label="share of the true class")
    out = Path(out)
    FigureCanvasAgg(figure).print_png(out)
    return out


def plot_reliability(metrics: Mapping, out: str | Path, *, title: str) -> Path | None:
    """A PNG of the reliability diagram of `metrics["calibration"]`: each confidence bin's accuracy (bars) against
    the diagonal a calibrated model follows, the gap shaded, the bin counts below; None without calibration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    calibration = metrics.get("calibration")
    if not calibration:
        return None
    bins = calibration["bins"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    width = bins[0]["upper"] - bins[0]["lower"]
    figure = Figure(figsize=(7, 7), dpi=100, layout="constrained")
    figure.suptitle(f"{title}: ECE {calibration['ece']:.4f}, NLL {calibration['nll']:.4f}")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    filled = [(c, b) for c, b in zip(centres, bins, strict=True) if b["count"]]
    top.bar([c for c, _ in filled], [b["accuracy"] for _, b in filled], width=width, color="#1f77b4",
            edgecolor="white", label="accuracy of the bin")
    top.bar([c for c, _ in filled], [b["confidence"] - b["accuracy"] for _, b in filled], width=width,
            bottom=[b["accuracy"] for _, b in filled], color="#d62728", alpha=0.35, label="gap to its confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    top.set(ylim=(0, 1), ylabel="accuracy")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, [b["count"] for b in bins], width=width, color="#7f7f7f")
    bottom.set(xlim=(0, 1), xlabel="confidence (top-1 softmax probability)", ylabel="samples")
    out = Path(out)
    FigureCanvasAgg(figure).print_png(out)
    return out


def embedded_png(path: str | Path, alt: str, link: str = "") -> str:
    """A markdown image of the PNG at `path` as a data URI (`link`, when given, also named below it); a PNG over
    `EMBED_LIMIT_BYTES` is only linked."""
    data = Path(path).read_bytes()
    where = f"\n\n{text(alt)}: {code(link)}" if link else ""
    if len(data) > EMBED_LIMIT_BYTES:
        return f"{text(alt)}: {len(data):,} bytes, too large to embed{where}"
    return f"![{text(alt)}](data:image/png;base64,{base64.b64encode(data).decode()}){where}"


def figures_markdown(title: str, figures: Sequence[tuple[Path, str, str]]) -> str:
    """A markdown artifact showing each (PNG path, caption, stored URI) that exists."""
    parts = [f"# {text(title)}"]
    for path, caption, link in figures:
        if Path(path).is_file():
            parts += [f"## {text(caption)}", embedded_png(path, caption, link)]
    return "\n\n".join(parts) + "\n"
