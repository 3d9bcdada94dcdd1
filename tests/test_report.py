"""Progress parsing, per-epoch rows and the PNG training curves (panels checked on the Figure and by pixel colour)."""

import pytest

from sknet.report import (
    EMPTY_TEXT,
    EPOCH_COLOR,
    LOSS_COLOR,
    LR_COLOR,
    SCALE_COLOR,
    SKIPPED_COLOR,
    SPEED_COLOR,
    TOP1_COLOR,
    TOP5_COLOR,
    epoch_rows,
    plot_training_curve,
    progress_of,
    read_metrics,
    training_figure,
)


def test_progress_is_parsed_from_a_rank_prefixed_log_line():
    line = ("[rank 0] 2026-11-28 03:10:00 INFO sknet.training.loop: epoch 2/3 step 25/60 loss 1.8423 lr 0.04000 "
            "61.2 img/s")
    assert progress_of(line) == (25, 60, 1.8423)
    assert progress_of("[rank 0] resuming from step-00000020.ckpt (step 20 of 60)") is None


def _records(steps: int = 40, per_epoch: int = 10) -> list[dict]:
    """Known metrics: loss falling from 2.3, lr decaying from 0.1, 50-70 images/s, a dynamic loss scale halved by
    an overflow at steps 3 and 12, an epoch record every 10 steps."""
    records = []
    for step in range(1, steps + 1):
        scale = 65536.0 / 2 ** ((step >= 3) + (step >= 12))
        records.append({"event": "step", "step": step, "epoch": (step - 1) // per_epoch + 1, "loss": 2.3 - step / 25,
                        "lr": 0.1 * (1 - step / (steps + 1)), "images_per_sec": 60.0 + 10 * (step % 2),
                        "loss_scale": scale, "overflow": step in (3, 12)})
        if step % per_epoch == 0:
            records.append({"event": "epoch", "step": step, "epoch": step // per_epoch, "loss": 2.3 - step / 25,
                            "images_per_sec": 60.0, "seconds": 5.0, "skipped_steps": int(step in (10, 20)),
                            "loss_scale": scale})
    return records


EVAL = {"top_1_accuracy": 0.42, "top_5_accuracy": 0.91, "synthetic_data": True}


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def _pixels_near(image, box, color, tolerance=40) -> int:
    """How many pixels of `image` inside `box` (left, top, right, bottom) are within `tolerance` of `color`."""
    import numpy as np

    pixels = np.asarray(image.crop(box).convert("RGB"), dtype=int)
    return int((np.abs(pixels - np.array(color)).sum(axis=-1) <= tolerance).sum())


def test_the_figure_has_labelled_panels_for_loss_lr_speed_eval_loss_scale_and_skipped_steps():
    figure = training_figure(_records(), title="sknet50: top-1 0.42", metrics=EVAL)
    loss, lr, speed, evaluation, scale, skipped = figure.axes
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "learning rate", "images/s", "accuracy",
                                                       "loss scale", "skipped steps"]
    assert [scale.get_xlabel(), skipped.get_xlabel()] == ["step", "step"]
    assert sorted(set(scale.lines[0].get_ydata())) == [16384.0, 32768.0, 65536.0]
    assert [(bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in skipped.patches] == [
        (10, 1), (20, 1), (30, 0), (40, 0)]
    assert figure.get_suptitle() == "sknet50: top-1 0.42 (SYNTHETIC data)"
    step_line, epoch_dots = loss.lines[:2]
    assert list(step_line.get_xdata()) == list(range(1, 41)) and list(epoch_dots.get_xdata()) == [10, 20, 30, 40]
    assert lr.lines[0].get_ydata()[0] > lr.lines[0].get_ydata()[-1]
    assert sorted(line.get_ydata()[0] for line in evaluation.lines) == [0.42, 0.42, 0.91, 0.91]
    assert {t.get_text() for t in evaluation.get_legend().get_texts()} == {"top-1 0.4200", "top-5 0.9100"}


def test_synthetic_is_not_said_twice_and_real_data_is_not_marked():
    marked = training_figure(_records(), title="x (SYNTHETIC data)", metrics=EVAL)
    assert marked.get_suptitle() == "x (SYNTHETIC data)"
    real = training_figure(_records(), title="x", metrics={**EVAL, "synthetic_data": False})
    assert real.get_suptitle() == "x"
    assert training_figure(_records(), title="x", synthetic=True).get_suptitle() == "x (SYNTHETIC data)"


def test_the_png_draws_each_panel_in_its_place(tmp_path):
    from PIL import Image

    png = plot_training_curve(_records(), tmp_path / "curve.png", title="t", metrics=EVAL, size=(1000, 900))
    image = Image.open(png)
    assert image.format == "PNG" and image.size == (1000, 900)
    image = image.convert("RGB")
    left, right = (0, 500), (500, 1000)
    top, middle, bottom = (0, 300), (300, 600), (600, 900)

    def box(column, row):
        return column[0], row[0], column[1], row[1]

    for place, color in [(box(left, top), LOSS_COLOR), (box(left, top), EPOCH_COLOR), (box(right, top), LR_COLOR),
                         (box(left, middle), SPEED_COLOR), (box(right, middle), TOP1_COLOR),
                         (box(right, middle), TOP5_COLOR), (box(left, bottom), SCALE_COLOR),
                         (box(right, bottom), SKIPPED_COLOR)]:
        assert _pixels_near(image, place, _rgb(color)) > 50, (place, color)
    assert _pixels_near(image, box(right, middle), _rgb(LOSS_COLOR)) < 10  # each series stays in its own panel
    assert _pixels_near(image, box(left, top), _rgb(LR_COLOR)) < 10


def test_the_eval_panel_says_not_evaluated_without_metrics():
    evaluation = training_figure(_records(), title="t").axes[3]
    assert not evaluation.lines and [t.get_text() for t in evaluation.texts] == ["not evaluated"]


@pytest.mark.slow
def test_epoch_rows_and_curve_come_from_the_metrics_log(smoke_run, tmp_path):
    from PIL import Image

    records = read_metrics(smoke_run["output_dir"])
    rows = epoch_rows(records)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert all(r["images_per_sec"] > 0 and r["seconds"] > 0 for r in rows)
    png = plot_training_curve(records, tmp_path / "curve.png", title="top-1 0.9", metrics=EVAL)
    image = Image.open(png)
    assert image.format == "PNG" and image.size == (1200, 1050)
    assert _pixels_near(image.convert("RGB"), (0, 0, 600, 350), _rgb(LOSS_COLOR)) > 50  # the loss line was drawn
    assert [r["skipped_steps"] for r in rows] == [0, 0, 0] and {r["loss_scale"] for r in rows} == {1024.0}
    figure = training_figure(records, title="top-1 0.9")
    assert len(figure.axes[1].lines[0].get_xdata()) == len([r for r in records if r["event"] == "step"])


def test_a_curve_without_records_is_a_png_saying_no_steps_yet(tmp_path):
    from PIL import Image

    assert read_metrics(tmp_path) == []
    png = plot_training_curve([], tmp_path / "empty.png", title="no steps yet", size=(600, 400))
    image = Image.open(png)
    assert image.format == "PNG" and image.size == (600, 400)
    figure = training_figure([], title="no steps yet")
    assert not figure.axes and EMPTY_TEXT in [t.get_text() for t in figure.texts]


def test_a_diverged_loss_logged_as_null_is_shown_not_crashed_on(tmp_path):
    from PIL import Image

    records = [{"event": "step", "step": 5, "loss": 2.3, "lr": 0.1, "images_per_sec": 60.0},
               {"event": "step", "step": 10, "loss": None, "lr": 0.1, "images_per_sec": 60.0},
               {"event": "epoch", "epoch": 1, "step": 10, "loss": None, "images_per_sec": 60.0, "seconds": 5.0}]
    assert epoch_rows(records)[0]["mean_loss"] is None
    assert Image.open(plot_training_curve(records, tmp_path / "c.png", title="diverged")).format == "PNG"
    loss = training_figure(records, title="diverged").axes[0]
    step_line, epoch_dots, diverged = loss.lines
    assert list(step_line.get_xdata()) == [5] and list(epoch_dots.get_xdata()) == []
    assert list(diverged.get_xdata()) == [10, 10]  # one dashed mark at the null step
    assert "loss null (diverged)" in {t.get_text() for t in loss.get_legend().get_texts()}


def _summary(value: str, loss: float, message: str = "gate passed: top_1_accuracy 0.9300 ≥ threshold 0.5000") -> str:
    from sknet.config import load_config
    from sknet.report import run_summary

    metrics = {"top_1_accuracy": 0.93, "top_5_accuracy": 0.99, "loss": loss, "samples": 320}
    return run_summary(load_config("cpu-smoke"), {"uri": value, "digest": "d" * 64, "synthetic": False}, metrics,
                       value, passed=True, message=message)


def test_the_run_summary_shows_a_hostile_dataset_uri_and_message_as_text_never_rendered():
    from test_escaping_and_redaction import HOSTILE, check_rendered_as_text

    check_rendered_as_text(_summary(HOSTILE, 0.25, message=HOSTILE), _summary("s3://b/datasets/cifar10/d", 0.25),
                           [HOSTILE])


def test_the_run_summary_shows_a_nan_loss_as_a_dash():
    summary = _summary("s3://b/datasets/cifar10/d", float("nan"))
    assert "- top-5 0.9900, loss —, 320 samples" in summary and "nan" not in summary
