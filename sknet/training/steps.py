"""Global steps, sinks and epochs: how a run's steps map onto MindSpore's `Model.train`.

A run counts global steps (`steps_per_epoch × train.epochs` in all). Without a dataset sink (CPU) `Model.train`
counts dataset epochs and calls the step callbacks once per step. With a sink (Ascend/GPU) every "epoch" of
`Model.train` is one sink of `sink_size` steps run on the device, and its callbacks see the step count advance
by `sink_size` per call (`mindspore/train/model.py`, `_train_dataset_sink_process`: `cur_step_num +=
dataset_helper.sink_size()`). `TrainCall` is the one place where this difference lives.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from sknet.errors import ConfigError

log = logging.getLogger(__name__)

# Below this many steps per sink, a device sink buys little: each sink boundary is a device→host sync, the
# ranks' SIGTERM agreement (an all-reduce) and the step log. A cadence that forces a smaller sink is refused
# rather than silently run at a few steps per sink (the zoo sinks a whole epoch, 195 steps).
MIN_SINK_STEPS = 16


def sink_size(train, steps_per_epoch: int) -> int:
    """Steps per device sink (1: no sink, the host feeds every step).

    CPU: 1, MindSpore has no dataset sink there. Ascend/GPU: `train.sink_size` (0: `train.log_every_steps`),
    lowered to divide the epoch and the logging and checkpoint cadence, so that logging, checkpoints, resume
    and SIGTERM fall on sink boundaries; a sink below `MIN_SINK_STEPS` is refused, naming the keys to change.
    """
    if train.device_target == "CPU":
        return 1
    wanted = train.sink_size or train.log_every_steps
    cadence = math.gcd(steps_per_epoch, train.log_every_steps, train.checkpoint_every_steps)
    size = max(d for d in range(1, wanted + 1) if cadence % d == 0)
    if size < min(MIN_SINK_STEPS, wanted, steps_per_epoch):
        raise ConfigError(
            f"a dataset sink of {size} step(s): {steps_per_epoch} steps per epoch, train.log_every_steps="
            f"{train.log_every_steps} and train.checkpoint_every_steps={train.checkpoint_every_steps} have no "
            f"common divisor of at least {MIN_SINK_STEPS} (each sink boundary is a host sync). Make "
            "train.log_every_steps and train.checkpoint_every_steps multiples of a divisor of the epoch "
            f"(e.g. train.log_every_steps={_suggested_cadence(steps_per_epoch, wanted)})")
    if size != wanted:
        log.warning("train.sink_size: %d steps per sink (asked for %d) to divide the epoch (%d steps) and the "
                    "log and checkpoint cadence", size, wanted, steps_per_epoch)
    return size


def _suggested_cadence(steps_per_epoch: int, wanted: int) -> int:
    """The divisor of the epoch nearest to `wanted` that is at least MIN_SINK_STEPS (or the epoch itself)."""
    divisors = [d for d in range(MIN_SINK_STEPS, steps_per_epoch + 1) if steps_per_epoch % d == 0]
    return min(divisors, key=lambda d: abs(d - wanted)) if divisors else steps_per_epoch


@dataclass(frozen=True)
class TrainCall:
    """The arguments of `Model.train` that continue a run at `start_step`, and what a callback call means."""

    epoch: int  # Model.train's `epoch`: dataset epochs without a sink, sinks with one ("final epoch")
    initial_epoch: int  # how many of those are done
    dataset_sink_mode: bool
    sink_size: int  # -1 without a sink (MindSpore: the whole dataset per epoch)
    steps_per_call: int  # global steps between two step callbacks

    def global_step(self, start_step: int, cur_step_num: int) -> int:
        """The run's global step from MindSpore's `cb_params.cur_step_num`, which counts from 0 in this call
        (`Model.train` does not pass an initial step) and advances by `steps_per_call`."""
        return start_step + cur_step_num


def train_call(start_step: int, steps_per_epoch: int, total_steps: int, sink: int) -> TrainCall:
    """How to call `Model.train` for the steps after `start_step` (which a sink run reaches only at sink
    boundaries: it checkpoints nowhere else)."""
    if sink <= 1:
        return TrainCall(epoch=math.ceil(total_steps / steps_per_epoch), initial_epoch=start_step // steps_per_epoch,
                         dataset_sink_mode=False, sink_size=-1, steps_per_call=1)
    if start_step % sink or total_steps % sink:
        raise ValueError(f"step {start_step} of {total_steps} is not a boundary of {sink}-step sinks")
    return TrainCall(epoch=total_steps // sink, initial_epoch=start_step // sink, dataset_sink_mode=True,
                     sink_size=sink, steps_per_call=sink)
