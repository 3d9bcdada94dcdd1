"""Global steps, sinks and epochs: how a run's steps map onto MindSpore's `Model.train`.

A run counts global steps (`steps_per_epoch × train.epochs` in all). Without a dataset sink (CPU) `Model.train`
counts dataset epochs and calls the step callbacks once per step. With a sink (Ascend/GPU) every "epoch" of
`Model.train` is one sink of `sink_size` steps run on the device, and its callbacks see the step count advance
by `sink_size` per call (`mindspore/train/model.py`, `_train_dataset_sink_process`: `cur_step_num +=
dataset_helper.sink_size()`). `TrainCall` is the one place where this difference lives.

`plan_steps` is the one place that decides a run's shape (steps per epoch for its world size, the sink, the log
and checkpoint cadence): the rank, `sknet launch --dry-run` and `sknet preflight` all call it
(`sknet.launch.admission.admit`), so a run the ranks would refuse is refused before any of them starts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from sknet.data.layout import TRAIN_RECORDS
from sknet.errors import ConfigError

log = logging.getLogger(__name__)

# Below this many steps per sink, a device sink buys little: each sink boundary is a device→host sync, the
# ranks' SIGTERM agreement (an all-reduce) and the step log. The sink is the divisor of the epoch nearest to the
# wanted size that is at least this (or the whole epoch, when it is shorter); the zoo sinks a whole epoch.
MIN_SINK_STEPS = 16


@dataclass(frozen=True)
class StepPlan:
    """What the ranks of a run will do per epoch: MindSpore's dataset size for one rank's shard, the sink, and
    the log and checkpoint cadence in force (the configured ones moved onto sink boundaries)."""

    world_size: int
    steps_per_epoch: int
    sink_size: int  # 1: no sink, the host feeds (and syncs) every step
    log_every_steps: int
    checkpoint_every_steps: int  # 0: only at the end
    epochs: int
    adjusted: tuple[str, ...] = ()  # what was moved onto sink boundaries, in words

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def to_dict(self) -> dict:
        return {"world_size": self.world_size, "steps_per_epoch": self.steps_per_epoch, "sink_size": self.sink_size,
                "log_every_steps": self.log_every_steps, "checkpoint_every_steps": self.checkpoint_every_steps,
                "total_steps": self.total_steps, "adjusted": list(self.adjusted)}


def shard_steps(records: int, world_size: int, batch_size: int, num_samples: int | None = None) -> int:
    """Batches per epoch of one rank's shard, as MindSpore counts them (`get_dataset_size`): its distributed
    sampler gives each of `world_size` shards ceil(records / world_size) samples (wrapping round to pad the
    last ones), `num_samples` caps each shard at its share (`sknet.data.pipeline`), and the partial batch is
    dropped. `tests/test_steps.py` checks this against MindSpore's own count."""
    per_shard = math.ceil(records / world_size)
    if num_samples is not None:
        per_shard = min(per_shard, max(1, num_samples // world_size))
    return per_shard // batch_size


def plan_steps(cfg, world_size: int | None = None, train_records: int = TRAIN_RECORDS) -> StepPlan:
    """The step plan of `cfg` on `world_size` ranks (default `launch.ranks`) over `train_records` training
    records; `ConfigError` when no rank would get a full batch."""
    t, world = cfg.train, world_size or cfg.launch.ranks
    steps = shard_steps(train_records, world, t.batch_size, cfg.data.num_train_samples)
    if steps == 0:
        raise ConfigError(
            f"no full batch of train.batch_size={t.batch_size} on each of {world} rank(s) "
            f"({train_records:,} training records, data.num_train_samples={cfg.data.num_train_samples}): expected "
            "a batch no larger than a rank's shard")
    if t.device_target == "CPU":  # MindSpore has no dataset sink on CPU: the cadence stands as configured
        return StepPlan(world, steps, 1, t.log_every_steps, t.checkpoint_every_steps, t.epochs)
    sink = choose_sink(steps, t.sink_size or t.log_every_steps)
    log_every = on_boundary(t.log_every_steps, sink)
    checkpoint_every = on_boundary(t.checkpoint_every_steps, sink) if t.checkpoint_every_steps else 0
    adjusted = tuple(
        f"{key}={asked} → {used} (a multiple of the {sink}-step sink)"
        for key, asked, used in (("train.log_every_steps", t.log_every_steps, log_every),
                                 ("train.checkpoint_every_steps", t.checkpoint_every_steps, checkpoint_every))
        if asked != used)
    if t.sink_size and t.sink_size != sink:
        adjusted = (f"train.sink_size={t.sink_size} → {sink} (a divisor of the {steps}-step epoch of at least "
                    f"{min(MIN_SINK_STEPS, steps)})", *adjusted)
    return StepPlan(world, steps, sink, log_every, checkpoint_every, t.epochs, adjusted)


def choose_sink(steps_per_epoch: int, wanted: int) -> int:
    """The divisor of the epoch nearest to `wanted` (the larger on a tie) among those of at least
    `min(MIN_SINK_STEPS, steps_per_epoch)`: a sink never straddles an epoch, and never starves the device."""
    floor = min(MIN_SINK_STEPS, steps_per_epoch)
    divisors = [d for d in range(floor, steps_per_epoch + 1) if steps_per_epoch % d == 0]
    return min(divisors, key=lambda d: (abs(d - wanted), -d))


def on_boundary(every: int, sink: int) -> int:
    """`every` steps moved to the nearest multiple of `sink` (at least one sink): callbacks act at sink ends."""
    return max(1, round(every / sink)) * sink


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
