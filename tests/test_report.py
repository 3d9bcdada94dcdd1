"""Progress parsing, per-epoch rows and the PNG loss curve, from a real smoke run's metrics log."""

import pytest

from sknet.report import epoch_rows, plot_training_curve, progress_of, read_metrics


def test_progress_is_parsed_from_a_rank_prefixed_log_line():
    line = "[rank 0] 2026-11-28 03:10:00 INFO sknet.train: epoch 2/3 step 25/60 loss 1.8423 lr 0.04000 61.2 img/s"
    assert progress_of(line) == (25, 60, 1.8423)
    assert progress_of("[rank 0] resuming from step-00000020.ckpt (step 20 of 60)") is None


@pytest.mark.slow
def test_epoch_rows_and_curve_come_from_the_metrics_log(smoke_run, tmp_path):
    from PIL import Image

    records = read_metrics(smoke_run["output_dir"])
    rows = epoch_rows(records)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert all(r["images_per_sec"] > 0 and r["seconds"] > 0 for r in rows)
    png = plot_training_curve(records, tmp_path / "curve.png", title="top-1 0.9")
    image = Image.open(png)
    assert image.format == "PNG" and image.size == (720, 400)
    assert (31, 119, 180) in {color for _, color in image.getcolors(10_000)}  # the loss line was drawn


def test_a_curve_without_records_is_an_empty_chart_not_an_error(tmp_path):
    assert read_metrics(tmp_path) == []
    assert plot_training_curve([], tmp_path / "empty.png", title="no steps yet").stat().st_size > 0


def test_a_diverged_loss_logged_as_null_is_shown_not_crashed_on(tmp_path):
    records = [{"event": "step", "step": 5, "loss": 2.3}, {"event": "step", "step": 10, "loss": None},
               {"event": "epoch", "epoch": 1, "step": 10, "loss": None, "images_per_sec": 60.0, "seconds": 5.0}]
    assert epoch_rows(records)[0]["mean_loss"] is None
    assert plot_training_curve(records, tmp_path / "c.png", title="diverged").stat().st_size > 0
