"""The training step line: written by `sknet.training.loop` once per logged step, read back from rank output.

    epoch 2/3 step 25/60 loss 1.8423 lr 0.04000 61.2 img/s

Reports follow a run's progress by parsing this line (`parse_step_line`) wherever it appears in an
output line (after a `[rank N]` prefix and a log record's time and level, say).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STEP_FORMAT = "epoch %d/%d step %d/%d loss %.4f lr %.5f %.1f img/s"
_NUMBER = r"(-?(?:\d+(?:\.\d*)?|nan|inf))"
_STEP_LINE = re.compile(rf"\bepoch (\d+)/(\d+) step (\d+)/(\d+) loss {_NUMBER} lr {_NUMBER} {_NUMBER} img/s")


@dataclass(frozen=True)
class StepLine:
    epoch: int  # 1-based
    epochs: int
    step: int  # global, 1-based: steps done so far
    total_steps: int
    loss: float
    lr: float
    images_per_sec: float


def format_step_line(epoch: int, epochs: int, step: int, total_steps: int, loss: float, lr: float,
                     images_per_sec: float) -> str:
    """The line `sknet.training.loop` logs after `step` (epoch and step 1-based)."""
    return STEP_FORMAT % (epoch, epochs, step, total_steps, loss, lr, images_per_sec)


def parse_step_line(line: str) -> StepLine | None:
    """The step line's values, found anywhere in `line`; None when `line` holds no step line."""
    match = _STEP_LINE.search(line)
    if match is None:
        return None
    epoch, epochs, step, total, loss, lr, speed = match.groups()
    return StepLine(int(epoch), int(epochs), int(step), int(total), float(loss), float(lr), float(speed))
