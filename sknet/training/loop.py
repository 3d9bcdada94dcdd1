"""One rank's training: distributed init, model, optimizer, loop, checkpoints, resume, metrics log.

Launched once per rank (by `sknet train`, or by the launcher for several ranks). Rank 0 writes
`<output_dir>/metrics.jsonl`, `<output_dir>/checkpoints/` and `<output_dir>/result.json`.
Resuming from the latest checkpoint yields the same parameters as an uninterrupted run: each epoch's
data order and augmentation are seeded by (seed, epoch), and the batches before the checkpoint are
replayed and skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sknet.training.checkpoint import (
    BackgroundUploads, CheckpointMirror, latest_checkpoint, latest_verified_checkpoint, load_into, save_checkpoint,
)
from sknet.config import Config
from sknet.data.layout import local_dataset_path, verify_layout
from sknet.errors import DataError
from sknet.training.run_record import check_run_dir
from sknet.run_files import METRICS_FILE, RANKS_DIR, RESULT_FILE, rank_record_file
from sknet.training.runtime import configure, loss_scaling, sink_size
from sknet.training.lr_schedule import learning_rates
from sknet.storage import store_from_config
from sknet.jsonio import dumps, json_safe
from sknet.training.stopping import Diverged, DivergenceGuard, LAUNCHED_ENV, Preempted, StopRequest, watch_launcher
from sknet.training.train_log import format_step_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    output_dir: str
    checkpoint: str
    steps: int
    epochs: int
    final_loss: float | None  # None when the last loss was non-finite
    resumed_from_step: int
    seconds: float
    images_per_sec: float
    synthetic_data: bool
    complete: bool

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


def epoch_seed(seed: int, epoch: int) -> int:
    """The dataset seed of one epoch: independent of where a run started or resumed."""
    return (seed * 1_000_003 + epoch) % 2**32


def train(cfg: Config, *, stop_after_steps: int | None = None) -> TrainResult:
    """Train per `cfg`, resuming from the newest checkpoint in `train.output_dir` if there is one.

    `stop_after_steps` ends the run early at that global step, after checkpointing (as a preempted
    run would); a later call picks up from there.
    """
    data_dir = local_dataset_path(cfg.data.uri).resolve()
    report = verify_layout(data_dir)  # cheap; never compile or train on a bad copy
    output_dir = Path(cfg.train.output_dir).resolve()
    check_run_dir(cfg, output_dir)  # a directory holding another run is refused before anything compiles
    watch_launcher(cfg.launch.stop_grace_seconds)
    mirror = None
    if cfg.train.checkpoint_mirror:  # also proves the bucket is reachable before any compute
        mirror = CheckpointMirror(store_from_config(cfg.storage, cfg.train.checkpoint_mirror))
        if os.environ.get(LAUNCHED_ENV) != "1" and (pulled := mirror.pull(output_dir)) is not None:
            log.info("pulled checkpoint of step %d from %s", pulled, mirror.store.uri)  # the launcher pulls once per node
    # amp O1/O2 and the graph compiler write scratch files into the cwd: each rank gets its own.
    work = output_dir / RANKS_DIR / _process_name()
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(work))
        stop = stack.enter_context(StopRequest())
        uploads = None if mirror is None else stack.enter_context(
            BackgroundUploads(mirror, output_dir, cfg.train.keep_checkpoints))  # drained before returning
        return _train(cfg, report.path, output_dir, report.synthetic, stop_after_steps, stop, uploads)


@dataclass(frozen=True)
class _Training:
    """One rank's built training state: where it runs, what it trains, and the per-step schedule."""

    cfg: Config
    data_dir: Path
    output_dir: Path
    uploads: BackgroundUploads | None  # copies checkpoints to train.checkpoint_mirror off this thread
    rank: int
    ranks: int
    steps_per_epoch: int
    rates: object  # numpy array: the learning rate of each global step
    network: object  # mindspore.nn.Cell
    train_step: object  # the network with loss, optimizer and loss scaling: one call, one step
    guard: DivergenceGuard
    sink: int  # steps per device sink; 1: the host feeds (and syncs) every step

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.train.epochs

    @property
    def images_per_step(self) -> int:
        return self.cfg.train.batch_size * self.ranks

    def dataset(self, epoch: int):
        """This rank's shard of the training data for `epoch`, shuffled and augmented by (seed, epoch)."""
        return _dataset(self.cfg, self.data_dir, epoch, self.rank, self.ranks)

    def checkpoint(self, step: int) -> None:
        """Save the training state of `step` locally, then copy it to the mirror if there is one; never a
        state with a bad loss or a non-finite parameter (it would be resumed from, or released)."""
        if self.guard.bad or not _finite_parameters(self.network):
            log.warning("step %d: not checkpointed, the loss or a parameter is not finite", step)
            return
        save_checkpoint(self.train_step, self.output_dir, step, self.cfg.train.keep_checkpoints)
        if self.uploads is not None:
            self.uploads.submit(step)


def _train(cfg: Config, data_dir: Path, output_dir: Path, synthetic: bool, stop_after_steps: int | None,
           stop: StopRequest, uploads: BackgroundUploads | None) -> TrainResult:
    run = _build(cfg, data_dir, output_dir, uploads)
    start_step = _resume(run)
    log.info(
        "training %s (%s stem) on %s: %d epochs × %d steps, batch %d × %d rank(s), %s",
        cfg.model.name, cfg.model.stem, cfg.train.device_target, cfg.train.epochs, run.steps_per_epoch,
        cfg.train.batch_size, run.ranks, "SYNTHETIC data" if synthetic else f"data {data_dir}",
    )
    end_step = run.total_steps if stop_after_steps is None else min(run.total_steps, stop_after_steps)
    started = time.perf_counter()
    try:
        step, loss = _run_epochs(run, start_step, end_step, stop)
    except Diverged as exc:
        _record(run, start_step, exc.step, float("nan"), started, synthetic)
        raise
    if run.rank == 0 and (latest_checkpoint(output_dir) or (None,))[0] != step:
        run.checkpoint(step)
    result = _record(run, start_step, step, loss, started, synthetic)
    if step < end_step:  # stopped early: SIGTERM reached this rank or another one
        raise Preempted(step, output_dir)
    return result


def _process_name() -> str:
    """`rank-N` for a rank (RANK_ID), `scheduler` for MindSpore's scheduler process."""
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return "scheduler"
    return f"rank-{os.environ.get('RANK_ID', '0')}"


def _dataset(cfg: Config, data_dir: Path, epoch: int, rank: int, ranks: int):
    import mindspore as ms

    from sknet.data.pipeline import build_dataset

    ms.dataset.config.set_seed(epoch_seed(cfg.train.seed, epoch))
    return build_dataset(
        data_dir, train=True, batch_size=cfg.train.batch_size, image_size=cfg.data.image_size,
        num_samples=cfg.data.num_train_samples, num_shards=ranks, shard_id=rank,
        num_parallel_workers=cfg.data.num_parallel_workers,
    )


def _build(cfg: Config, data_dir: Path, output_dir: Path, uploads: BackgroundUploads | None) -> _Training:
    """Seed the runtime, join the ranks, size the epoch, and build network, schedule and train step."""
    import mindspore as ms
    from mindspore import nn

    from sknet.model import build_model

    t = cfg.train
    configure(t.device_target, t.seed)
    rank, ranks = _init_distributed()
    steps_per_epoch = _dataset(cfg, data_dir, 0, rank, ranks).get_dataset_size()
    if steps_per_epoch == 0:
        raise DataError(
            f"data.num_train_samples={cfg.data.num_train_samples} gives no full batch of "
            f"train.batch_size={t.batch_size} on each of {ranks} rank(s)"
        )
    rates = learning_rates(
        t.lr_schedule, base_lr=t.base_lr, total_steps=steps_per_epoch * t.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=t.warmup_epochs, warmup_start_lr=t.warmup_start_lr, end_lr=t.end_lr,
        poly_power=t.poly_power,
    )
    network = build_model(cfg.model.name, cfg.model.num_classes, cfg.model.stem)
    manager, optimizer_loss_scale = loss_scaling(t)
    optimizer = nn.Momentum(
        _parameter_groups(network, t.weight_decay), learning_rate=ms.Tensor(rates),
        momentum=t.momentum, loss_scale=optimizer_loss_scale,
    )
    train_step = ms.amp.build_train_network(
        network, optimizer, nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), level=t.amp_level,
        loss_scale_manager=manager,
    )
    return _Training(cfg, data_dir, output_dir, uploads, rank, ranks, steps_per_epoch, rates, network, train_step,
                     DivergenceGuard(t.divergence_patience, t.max_loss), sink_size(t, steps_per_epoch))


def _resume(run: _Training) -> int:
    """Load the newest checkpoint that verifies, if any (damaged ones are named and skipped), and drop metrics
    past it; returns the step to continue from."""
    start_step = 0
    latest = latest_verified_checkpoint(run.output_dir)
    if latest is not None:
        start_step, path = latest
        load_into(run.train_step, path, what="training state", verified=True)  # latest_verified_checkpoint did
        log.info("resuming from %s (step %d of %d)", path, start_step, run.total_steps)
    if run.rank == 0:
        _truncate_metrics(run.output_dir / METRICS_FILE, after_step=start_step)
    return start_step


def _run_epochs(run: _Training, step: int, end_step: int, stop: StopRequest) -> tuple[int, float]:
    """Train from global `step` up to `end_step`, or to the step SIGTERM arrived in: (last step, its loss)."""
    loss = float("nan")
    while step < end_step:
        step, loss, end_step = _run_epoch(run, step, end_step, stop, loss)
    return step, loss


def _run_epoch(run: _Training, step: int, end_step: int, stop: StopRequest,
               loss: float) -> tuple[int, float, int]:
    """The rest of the epoch holding global `step` (its earlier batches replayed and skipped), at most to
    `end_step`: logs steps, checkpoints, logs the epoch if it finished. Returns (step, loss, end_step),
    `end_step` moved back to `step` when SIGTERM arrived."""
    if run.sink > 1:
        return _run_sunk_epoch(run, step, end_step, stop)
    t = run.cfg.train
    epoch = step // run.steps_per_epoch
    skip = step - epoch * run.steps_per_epoch
    epoch_losses, epoch_started = [], time.perf_counter()
    window_started, window_steps = time.perf_counter(), 0
    batches = run.dataset(epoch).create_tuple_iterator(num_epochs=1)
    for index, (images, labels) in enumerate(batches):
        if index < skip:
            continue
        loss = float(run.train_step(images, labels).asnumpy())
        step += 1
        window_steps += 1
        epoch_losses.append(loss)
        if step % t.log_every_steps == 0 or step == end_step:
            speed = window_steps * run.images_per_step / (time.perf_counter() - window_started)
            window_started, window_steps = time.perf_counter(), 0
            _log_step(run, epoch, step, loss, speed)
        if _at_step_boundary(run, step, loss, stop):
            end_step = step
        if step == end_step:
            break
    if step % run.steps_per_epoch == 0 and epoch_losses:
        _log_epoch(run, epoch, step, epoch_losses, len(epoch_losses), time.perf_counter() - epoch_started)
    return step, loss, end_step


def _run_sunk_epoch(run: _Training, step: int, end_step: int, stop: StopRequest) -> tuple[int, float, int]:
    """`_run_epoch` with dataset sink (Ascend/GPU): `run.sink` steps run on the device per call and the host
    sees the last one's loss. Logging, the divergence guard, checkpoints and SIGTERM act at sink boundaries
    (`sink_size` divides the epoch and both cadences). Not yet run on an NPU: CPU has no sink."""
    import mindspore as ms

    t = run.cfg.train
    epoch = step // run.steps_per_epoch
    dataset = run.dataset(epoch)
    if skip := step - epoch * run.steps_per_epoch:
        dataset = dataset.skip(skip)
    sunk = ms.data_sink(run.train_step, dataset, sink_size=run.sink, jit_config=ms.JitConfig())
    last = min((epoch + 1) * run.steps_per_epoch, end_step)
    losses, epoch_started, loss = [], time.perf_counter(), float("nan")
    while step < last:
        sink_started = time.perf_counter()
        loss = float(sunk().asnumpy())
        step += run.sink
        losses.append(loss)
        if step % t.log_every_steps == 0 or step >= last:
            _log_step(run, epoch, step, loss, run.sink * run.images_per_step / (time.perf_counter() - sink_started))
        if _at_step_boundary(run, step, loss, stop):
            return step, loss, step
    if step % run.steps_per_epoch == 0:
        _log_epoch(run, epoch, step, losses, step - epoch * run.steps_per_epoch, time.perf_counter() - epoch_started)
    return step, loss, end_step


def _at_step_boundary(run: _Training, step: int, loss: float, stop: StopRequest) -> bool:
    """What every step (or sink) boundary does: the divergence guard, rank 0's checkpoint cadence and the ranks'
    agreement on a SIGTERM; True when the ranks agreed to stop here."""
    run.guard.check(step, loss, lambda: (latest_checkpoint(run.output_dir) or (None, None))[1])
    every = run.cfg.train.checkpoint_every_steps
    if run.rank == 0 and every and step % every == 0:
        run.checkpoint(step)
    return stop.agreed(run.ranks)


def _log_epoch(run: _Training, epoch: int, step: int, losses: list[float], steps: int, seconds: float) -> None:
    """The epoch's record: mean of the losses the host saw, images/s over its `steps`."""
    _log_metrics(run.output_dir, run.rank, {
        "event": "epoch", "step": step, "epoch": epoch + 1, "loss": sum(losses) / len(losses),
        "images_per_sec": round(steps * run.images_per_step / seconds, 2), "seconds": round(seconds, 3),
    })


def _log_step(run: _Training, epoch: int, step: int, loss: float, speed: float) -> None:
    """One step's metrics record (rank 0) and its step line in the log."""
    lr = run.rates[step - 1]
    _log_metrics(run.output_dir, run.rank, {"event": "step", "step": step, "epoch": epoch + 1, "loss": loss,
                                            "lr": float(lr), "images_per_sec": round(speed, 2)})
    log.info("%s", format_step_line(epoch + 1, run.cfg.train.epochs, step, run.total_steps, loss, lr, speed))


def _record(run: _Training, start_step: int, step: int, loss: float, started: float,
            synthetic: bool) -> TrainResult:
    """Write result.json (rank 0) and this rank's record (shard, parameter digest); return the result."""
    output_dir = run.output_dir
    elapsed = time.perf_counter() - started
    done = step - start_step
    newest = latest_checkpoint(output_dir)
    result = TrainResult(
        output_dir=str(output_dir),
        checkpoint=str(newest[1]) if run.rank == 0 and newest else "",
        steps=step, epochs=run.cfg.train.epochs, final_loss=loss, resumed_from_step=start_step,
        seconds=round(elapsed, 3),
        images_per_sec=round(done * run.images_per_step / elapsed, 2) if done else 0.0,
        synthetic_data=synthetic, complete=step == run.total_steps and not run.guard.bad,
    )
    if run.rank == 0:
        (output_dir / RESULT_FILE).write_text(dumps(result.to_dict(), indent=2) + "\n")
    rank_record = {"rank": run.rank, "ranks": run.ranks, "shard_id": run.rank, "num_shards": run.ranks,
                   "steps": step, "batches_per_epoch": run.steps_per_epoch,
                   "parameters_sha256": parameters_digest(run.network)}
    (output_dir / rank_record_file(run.rank)).write_text(dumps(rank_record, indent=2) + "\n")
    return result


def _finite_parameters(network) -> bool:
    import numpy as np

    return all(np.isfinite(p.asnumpy()).all() for p in network.trainable_params())


def parameters_digest(network) -> str:
    """sha256 over all trainable parameters in name order: equal digests, bit-identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for parameter in sorted(network.trainable_params(), key=lambda p: p.name):
        digest.update(parameter.name.encode())
        digest.update(parameter.asnumpy().tobytes())
    return digest.hexdigest()


def _init_distributed() -> tuple[int, int]:
    """(rank, ranks): joins the collective group when launched as one of several ranks."""
    if "MS_ROLE" not in os.environ and int(os.environ.get("RANK_SIZE", "1")) <= 1:
        return 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def _parameter_groups(network, weight_decay: float) -> list[dict]:
    """Weight decay on conv and dense weights only, not on BN γ/β or biases."""
    params = network.trainable_params()
    decayed = [p for p in params if not p.name.endswith(("gamma", "beta", "bias"))]
    exempt = [p for p in params if p.name.endswith(("gamma", "beta", "bias"))]
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
        {"order_params": params},
    ]


def _log_metrics(output_dir: Path, rank: int, record: dict) -> None:
    if rank != 0:
        return
    record = {**record, "time": round(time.time(), 3)}
    with open(output_dir / METRICS_FILE, "a") as stream:
        stream.write(dumps(record) + "\n")


def _truncate_metrics(path: Path, after_step: int) -> None:
    """Drop records past the resume point: they belong to steps that will run again."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= after_step]
    path.write_text("".join(line + "\n" for line in kept))
