"""The training step line: one format, written by sknet.training.loop and parsed back wherever it is read."""

import math

from sknet.training.train_log import StepLine, format_step_line, parse_step_line


def test_a_formatted_step_line_parses_back_to_its_values():
    line = format_step_line(2, 3, 25, 60, 1.84234, 0.04, 61.23)
    assert line == "epoch 2/3 step 25/60 loss 1.8423 lr 0.04000 61.2 img/s"
    assert parse_step_line(line) == StepLine(epoch=2, epochs=3, step=25, total_steps=60, loss=1.8423, lr=0.04,
                                             images_per_sec=61.2)


def test_the_step_line_is_found_after_a_rank_prefix_and_a_log_record_header():
    line = "[rank 1] 12:00:15 INFO " + format_step_line(1, 3, 5, 60, 1.995, 0.04916, 61.2)
    assert (parse_step_line(line).step, parse_step_line(line).total_steps) == (5, 60)


def test_a_diverged_loss_still_parses():
    assert math.isnan(parse_step_line(format_step_line(1, 1, 3, 9, float("nan"), 0.1, 8.0)).loss)
    assert parse_step_line(format_step_line(1, 1, 3, 9, float("inf"), 0.1, 8.0)).loss == math.inf


def test_other_lines_are_not_step_lines():
    assert parse_step_line("[rank 0] resuming from step-00000020.ckpt (step 20 of 60)") is None
    assert parse_step_line("epoch 1/3 step 5/60 loss . lr 0.1 1.0 img/s") is None
