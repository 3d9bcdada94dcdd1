"""What a run does at each step boundary, as MindSpore callbacks for `Model.train`.

`Model.train` calls `on_train_step_end` after every step without a dataset sink and after every sink with one
(see `sknet.training.steps`). The callbacks act there, in this order (`training_callbacks`):

1. `ReadStep`: the step's outputs as MindSpore defines them into `Progress`: the loss, and with a loss-scaling
   cell (`nn.TrainOneStepWithLossScaleCell`, what a dynamic loss scale builds) `(loss, overflow, scale)`.
2. `StepLog`: the step line and record at the log cadence, the epoch record at each epoch's end (rank 0 writes
   `metrics.jsonl`), with the loss scale and the steps whose update an overflow skipped.
3. `GuardDivergence`: `Diverged` after `train.divergence_patience` bad losses in a row.
4. `SaveCheckpoints`: rank 0's checkpoint cadence; a checkpoint due at an overflowed step waits for the next
   boundary whose update applied.
5. `StopAtBoundary`: every rank stops after the same step when SIGTERM reached any of them, or at the run's end.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from mindspore.train import Callback

from sknet.training.checkpoint import latest_checkpoint
from sknet.training.stopping import DivergenceGuard, StopRequest
from sknet.training.train_log import format_step_line

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the run is: written by `ReadStep` at each boundary, read by the callbacks after it."""

    step: int  # global steps done
    loss: float = math.nan  # the last step's loss (with a sink: the sink's last step)
    overflow: bool | None = None  # whether that step's update was skipped; None: the cell does not say
    loss_scale: float | None = None  # the scale the cell reports (a dynamic one moves), None: it reports none
    boundaries: int = 0  # step callbacks seen in this process
    startup_seconds: float | None = None  # from Model.train's start to the first boundary: compile + first step


def step_outputs(outputs) -> tuple[float, bool | None, float | None]:
    """(loss, overflow, loss scale) of one call of the train cell: a loss tensor, or the `(loss, overflow,
    scale)` tuple of `nn.TrainOneStepWithLossScaleCell` (mindspore/nn/wrap/loss_scale.py, `construct`)."""
    if isinstance(outputs, (tuple, list)):
        loss, overflow, scale = outputs
        return float(loss.asnumpy()), bool(overflow.asnumpy()), float(scale.asnumpy())
    return float(outputs.asnumpy()), None, None


def updates_applied(optimizer) -> int:
    """The optimizer's update count (`global_step`): MindSpore's loss-scaling cell skips the optimizer, and so
    this count, on a step whose gradients overflowed; with a sink it is the only exact count of skipped steps."""
    return int(optimizer.global_step.asnumpy().reshape(-1)[0])


class ReadStep(Callback):
    def __init__(self, progress: Progress, call):
        self.progress, self.call, self.start_step = progress, call, progress.step
        self.started = time.perf_counter()

    def on_train_begin(self, run_context) -> None:
        self.started = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        params = run_context.original_args()
        p = self.progress
        p.step = self.call.global_step(self.start_step, params.cur_step_num)
        p.loss, p.overflow, p.loss_scale = step_outputs(params.net_outputs)
        p.boundaries += 1
        if p.startup_seconds is None:
            p.startup_seconds = round(time.perf_counter() - self.started, 3)


@dataclass(frozen=True)
class RunShape:
    """What the log needs to know of the run: its length, cadence and who writes."""

    rank: int
    epochs: int
    steps_per_epoch: int
    images_per_step: int
    log_every_steps: int
    end_step: int
    rates: object  # numpy array: the learning rate of each update
    fixed_loss_scale: float | None  # the scale in force when the cell reports none (a fixed one)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


class StepLog(Callback):
    """Step lines and records at the log cadence, one epoch record at each epoch's end."""

    def __init__(self, progress: Progress, shape: RunShape, optimizer, write_record, mirror=None):
        import psutil

        self.progress, self.shape, self.optimizer, self.write = progress, shape, optimizer, write_record
        self.mirror = mirror  # BackgroundUploads of rank 0's checkpoints, if any: its status goes with each record
        self.last_step = progress.step
        self.process = psutil.Process()  # this rank's host memory goes with each step record

    def on_train_begin(self, run_context) -> None:
        now = time.perf_counter()
        self.window_started, self.window_steps = now, 0
        self.epoch_started, self.epoch_steps, self.epoch_losses = now, 0, []
        self.epoch_applied = updates_applied(self.optimizer)

    def on_train_step_end(self, run_context) -> None:
        p, shape = self.progress, self.shape
        ran, self.last_step = p.step - self.last_step, p.step
        self.window_steps += ran
        self.epoch_steps += ran
        self.epoch_losses.append(p.loss)
        if p.step % shape.log_every_steps == 0 or p.step == shape.end_step:
            self._log_step()
        if p.step % shape.steps_per_epoch == 0:
            self._log_epoch()

    def _loss_scale(self) -> float | None:
        return self.shape.fixed_loss_scale if self.progress.loss_scale is None else self.progress.loss_scale

    def _log_step(self) -> None:
        p, shape = self.progress, self.shape
        speed = self.window_steps * shape.images_per_step / (time.perf_counter() - self.window_started)
        self.window_started, self.window_steps = time.perf_counter(), 0
        lr = float(shape.rates[max(updates_applied(self.optimizer), 1) - 1])
        epoch = (p.step - 1) // shape.steps_per_epoch + 1
        record = {"event": "step", "step": p.step, "epoch": epoch, "loss": p.loss, "lr": lr,
                  "images_per_sec": round(speed, 2), "loss_scale": self._loss_scale(), "overflow": p.overflow,
                  "rss_mb": round(self.process.memory_info().rss / 2**20, 1)}
        if self.mirror is not None and self.mirror.submitted:
            record["mirror"] = self.mirror.status().to_dict()
        self.write(record)
        log.info("%s", format_step_line(epoch, shape.epochs, p.step, shape.total_steps, p.loss, lr, speed))

    def _log_epoch(self) -> None:
        """The epoch's record: mean of the losses the host saw, images/s over the steps this process ran, and
        the steps whose update an overflow skipped."""
        seconds = time.perf_counter() - self.epoch_started
        applied = updates_applied(self.optimizer)
        skipped = self.epoch_steps - (applied - self.epoch_applied)
        self.write({"event": "epoch", "step": self.progress.step,
                    "epoch": self.progress.step // self.shape.steps_per_epoch,
                    "loss": sum(self.epoch_losses) / len(self.epoch_losses),
                    "images_per_sec": round(self.epoch_steps * self.shape.images_per_step / seconds, 2),
                    "seconds": round(seconds, 3), "skipped_steps": skipped, "loss_scale": self._loss_scale()})
        if skipped:
            log.info("epoch %d: %d of %d steps skipped on overflow; loss scale now %g", self.progress.step //
                     self.shape.steps_per_epoch, skipped, self.epoch_steps, self._loss_scale())
        self.epoch_started, self.epoch_steps, self.epoch_losses, self.epoch_applied = \
            time.perf_counter(), 0, [], applied


class GuardDivergence(Callback):
    def __init__(self, progress: Progress, guard: DivergenceGuard, output_dir: Path):
        self.progress, self.guard, self.output_dir = progress, guard, output_dir

    def on_train_step_end(self, run_context) -> None:
        self.guard.check(self.progress.step, self.progress.loss,
                         lambda: (latest_checkpoint(self.output_dir) or (None, None))[1])


class SaveCheckpoints(Callback):
    """Rank 0's checkpoint every `every` steps; one due at an overflowed step (its update skipped) is taken at
    the next boundary whose update applied, so a checkpoint is always a step of progress."""

    def __init__(self, progress: Progress, every: int, save):
        self.progress, self.every, self.save, self.due = progress, every, save, False

    def on_train_step_end(self, run_context) -> None:
        p = self.progress
        self.due = self.due or (self.every > 0 and p.step % self.every == 0)
        if not self.due:
            return
        if p.overflow:
            log.info("step %d: the update overflowed and was skipped; the checkpoint waits for the next step", p.step)
            return
        self.save(p.step)
        self.due = False


class StopAtBoundary(Callback):
    """Ends `Model.train` after the run's last step, or after the step at which SIGTERM reached any rank (all
    ranks agree on it, so none is left waiting in the next step's all-reduce)."""

    def __init__(self, progress: Progress, stop: StopRequest, ranks: int, end_step: int):
        self.progress, self.stop, self.ranks, self.end_step = progress, stop, ranks, end_step

    def on_train_step_end(self, run_context) -> None:
        self.stop.reached_boundary()
        if self.stop.agreed(self.ranks) or self.progress.step >= self.end_step:
            run_context.request_stop()
