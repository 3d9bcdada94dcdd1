"""One rank's training: distributed init, model, optimizer, data, resume, and MindSpore's `Model.train`.

Launched once per rank (by `sknet train`, or by the launcher for several ranks). Rank 0 writes
`<output_dir>/metrics.jsonl`, `<output_dir>/checkpoints/` and `<output_dir>/result.json`.

The loop is MindSpore's `Model.train` on every target — with a dataset sink on Ascend/GPU (`sink_size` steps
per device call, the path the model zoo measured), without one on CPU — over ONE dataset and one compiled
graph per run. What we add acts at step (or sink) boundaries as callbacks (`sknet.training.callbacks`).
Resuming from the newest checkpoint yields the same parameters as an uninterrupted run: the dataset restarts
at the checkpoint's global step by replaying its pipeline (`set_init_step` without fast recovery), so every
batch has the order and augmentation it would have had.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sknet.config import Config
from sknet.data.layout import local_dataset_path, verify_layout
from sknet.errors import CheckpointError, DataError, LaunchError
from sknet.jsonio import dumps, json_safe
from sknet.launch.admission import admit
from sknet.run_files import COMPILE_CACHE_DIR, METRICS_FILE, RANKS_DIR, RESULT_FILE, rank_record_file
from sknet.storage import store_from_config
from sknet.training.callbacks import (
    GuardDivergence,
    Progress,
    ReadStep,
    RunShape,
    SaveCheckpoints,
    StepLog,
    StopAtBoundary,
)
from sknet.training.checkpoint import (
    BackgroundUploads,
    CheckpointMirror,
    latest_checkpoint,
    latest_verified_checkpoint,
    load_into,
    save_checkpoint,
)
from sknet.training.compile_cache import share_compile_cache, use_compile_cache
from sknet.training.lr_schedule import learning_rates
from sknet.training.run_record import check_run_dir, dataset_digest
from sknet.training.runtime import check_on_this_host, configure, fusion_split_indices, loss_scaling
from sknet.training.steps import StepPlan, TrainCall, train_call
from sknet.training.stopping import LAUNCHED_ENV, Diverged, DivergenceGuard, Preempted, StopRequest, watch_launcher

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
    startup_seconds: float | None = None  # Model.train's start to its first step boundary: the compile, mostly
    mirror: dict | None = None  # rank 0 with train.checkpoint_mirror: what it holds (`MirrorStatus`), after the drain

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


def train(cfg: Config, *, stop_after_steps: int | None = None) -> TrainResult:
    """Train per `cfg`, resuming from the newest checkpoint in `train.output_dir` if there is one.

    `stop_after_steps` ends the run early at that global step, after checkpointing (as a preempted
    run would); a later call picks up from there.
    """
    data_dir = local_dataset_path(cfg.data.uri).resolve()
    report = verify_layout(data_dir)  # cheap; never compile or train on a bad copy
    output_dir = Path(cfg.train.output_dir).resolve()
    if os.environ.get(LAUNCHED_ENV) != "1":  # the launcher checked and recorded the run directory for its ranks
        check_run_dir(cfg, output_dir, dataset_digest(report.path))  # another run's directory: refused here
    watch_launcher(cfg.launch.stop_grace_seconds)
    mirror = None
    if cfg.train.checkpoint_mirror:  # also proves the bucket is reachable before any compute
        mirror = CheckpointMirror(store_from_config(cfg.storage, cfg.train.checkpoint_mirror))
        if os.environ.get(LAUNCHED_ENV) != "1" and (pulled := mirror.pull(output_dir)) is not None:
            # (a launched rank does not pull: the launcher pulls once per node)
            log.info("pulled checkpoint of step %d from %s", pulled, mirror.store.uri)
    # a resumed or retried run (and with SKNET_COMPILE_CACHE_DIR, any later run of the same graph) skips the compile
    cache = use_compile_cache(output_dir / COMPILE_CACHE_DIR, cfg.to_dict(), report.train_records)
    log.info("compile cache: %s", cache or "off (no entry script, or MS_COMPILER_CACHE_ENABLE is not 1)")
    # amp O1/O2 and the graph compiler write scratch files into the cwd: each rank gets its own.
    work = output_dir / RANKS_DIR / _process_name()
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(work))
        stop = stack.enter_context(StopRequest())
        uploads = None if mirror is None else stack.enter_context(
            BackgroundUploads(mirror, output_dir, cfg.train.keep_checkpoints))  # drained before returning
        result = _train(cfg, report, output_dir, stop_after_steps, stop, uploads)
    if uploads is not None and uploads.submitted:  # drained: the mirror holds the run's last checkpoint
        result = replace(result, mirror=uploads.status().to_dict())
        (output_dir / RESULT_FILE).write_text(dumps(result.to_dict(), indent=2) + "\n")
    share_compile_cache(cache)
    return result


@dataclass(frozen=True)
class _Training:
    """One rank's built training state: where it runs, what it trains, the data and the loop's shape."""

    cfg: Config
    output_dir: Path
    uploads: BackgroundUploads | None  # copies checkpoints to train.checkpoint_mirror off this thread
    rank: int
    ranks: int
    steps_per_epoch: int
    rates: object  # numpy array: the learning rate of each update
    network: object  # mindspore.nn.Cell
    train_step: object  # the network with loss, optimizer and loss scaling: one call, one step
    model: object  # mindspore.train.Model over `train_step`: the loop
    dataset: object  # this rank's shard, all epochs: ONE dataset per run (a sink compiles once per dataset)
    guard: DivergenceGuard
    steps: StepPlan  # the sink and the log and checkpoint cadence in force (`sknet.launch.admission.admit`)

    @property
    def sink(self) -> int:
        """Steps per device sink; 1: the host feeds (and syncs) every step."""
        return self.steps.sink_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.train.epochs

    @property
    def images_per_step(self) -> int:
        return self.cfg.train.batch_size * self.ranks

    def checkpoint(self, step: int) -> None:
        """Save the training state of `step` locally, then copy it to the mirror if there is one; never a
        state with a bad loss or a non-finite parameter (it would be resumed from, or released)."""
        if self.guard.bad or not _finite_parameters(self.network):
            log.warning("step %d: not checkpointed, the loss or a parameter is not finite", step)
            return
        save_checkpoint(self.train_step, self.output_dir, step, self.cfg.train.keep_checkpoints)
        if self.uploads is not None:
            self.uploads.submit(step)


def _train(cfg: Config, report, output_dir: Path, stop_after_steps: int | None,
           stop: StopRequest, uploads: BackgroundUploads | None) -> TrainResult:
    data_dir, synthetic = report.path, report.synthetic
    run = _build(cfg, data_dir, report.train_records, output_dir, uploads)
    start_step = _resume(run)
    log.info(
        "training %s (%s stem) on %s: %d epochs × %d steps, batch %d × %d rank(s), %s, %s",
        cfg.model.name, cfg.model.stem, cfg.train.device_target, cfg.train.epochs, run.steps_per_epoch,
        cfg.train.batch_size, run.ranks, f"{run.sink} steps per sink" if run.sink > 1 else "no dataset sink",
        "SYNTHETIC data" if synthetic else f"data {data_dir}",
    )
    end_step = run.total_steps if stop_after_steps is None else min(run.total_steps, stop_after_steps)
    progress = Progress(step=start_step)
    started = time.perf_counter()
    try:
        _fit(run, progress, end_step, stop)
    except Diverged as exc:
        _record(run, start_step, exc.step, float("nan"), started, synthetic, progress)
        raise
    step = progress.step
    if run.rank == 0 and (latest_checkpoint(output_dir) or (None,))[0] != step:
        run.checkpoint(step)
    result = _record(run, start_step, step, progress.loss, started, synthetic, progress)
    if step < end_step:  # stopped early: SIGTERM reached this rank or another one
        raise Preempted(step, output_dir)
    return result


def _fit(run: _Training, progress: Progress, end_step: int, stop: StopRequest) -> None:
    """MindSpore's `Model.train` from `progress.step` to `end_step` (or a SIGTERM), with our callbacks acting at
    each step boundary (each sink's end with a dataset sink). Resumes mid-epoch: the dataset starts at the global
    step (`set_init_step`), replaying its pipeline so that data order and augmentation match an uninterrupted run."""
    if progress.step >= end_step:
        return
    call = train_call(progress.step, run.steps_per_epoch, run.total_steps, run.sink)
    if progress.step:
        run.dataset.set_init_step(progress.step)
    run.model.train(call.epoch, run.dataset, callbacks=training_callbacks(run, progress, call, end_step, stop),
                    dataset_sink_mode=call.dataset_sink_mode, sink_size=call.sink_size,
                    initial_epoch=call.initial_epoch)


def training_callbacks(run: _Training, progress: Progress, call: TrainCall, end_step: int,
                       stop: StopRequest) -> list:
    """The callbacks of `sknet.training.callbacks`, in the order they must act at each boundary."""
    t = run.cfg.train
    shape = RunShape(rank=run.rank, epochs=t.epochs, steps_per_epoch=run.steps_per_epoch,
                     images_per_step=run.images_per_step, log_every_steps=run.steps.log_every_steps, end_step=end_step,
                     rates=run.rates, fixed_loss_scale=t.loss_scale if t.loss_scale_mode == "fixed" else None)
    return [
        ReadStep(progress, call),
        StepLog(progress, shape, run.train_step.optimizer,
                lambda record: _log_metrics(run.output_dir, run.rank, record), mirror=run.uploads),
        GuardDivergence(progress, run.guard, run.output_dir),
        SaveCheckpoints(progress, run.steps.checkpoint_every_steps if run.rank == 0 else 0, run.checkpoint),
        StopAtBoundary(progress, stop, run.ranks, end_step),
    ]


def _process_name() -> str:
    """`rank-N` for a rank (RANK_ID), `scheduler` for MindSpore's scheduler process."""
    if os.environ.get("MS_ROLE") == "MS_SCHED":
        return "scheduler"
    return f"rank-{os.environ.get('RANK_ID', '0')}"


def _dataset(cfg: Config, data_dir: Path, rank: int, ranks: int):
    """This rank's shard of the training data for the whole run, shuffled and augmented from `train.seed`.
    A resumed run replays the pipeline up to its step (no fast recovery): the same batches, bit for bit."""
    import mindspore.dataset as ds

    from sknet.data.pipeline import build_dataset

    ds.config.set_seed(cfg.train.seed)
    ds.config.set_fast_recovery(False)
    return build_dataset(
        data_dir, train=True, batch_size=cfg.train.batch_size, image_size=cfg.data.image_size,
        num_samples=cfg.data.num_train_samples, num_shards=ranks, shard_id=rank,
        num_parallel_workers=cfg.data.num_parallel_workers,
    )


def build_train_step(network, optimizer, loss_fn, train):
    """The cell one step calls: MindSpore's own, by `ms.amp.build_train_network` (a loss-scaling cell that returns
    `(loss, overflow, scale)` for a dynamic loss scale, a plain `TrainOneStepCell` for a fixed one), with
    `train.keep_batchnorm_fp32` when it is set (else the amp level's own choice)."""
    import mindspore as ms

    manager, _ = loss_scaling(train)
    precision = {} if train.keep_batchnorm_fp32 is None else {"keep_batchnorm_fp32": train.keep_batchnorm_fp32}
    return ms.amp.build_train_network(network, optimizer, loss_fn, level=train.amp_level, loss_scale_manager=manager,
                                      **precision)


def _build(cfg: Config, data_dir: Path, train_records: int, output_dir: Path,
           uploads: BackgroundUploads | None) -> _Training:
    """Seed the runtime, join the ranks, admit the run for the group's size, and build network, schedule, train
    step and loop."""
    import mindspore as ms
    from mindspore import nn

    from sknet.model import build_model

    t = cfg.train
    check_on_this_host(cfg)  # MindSpore's own check would raise a bare ValueError at the dataset
    world = _planned_world_size()  # admitted as the dry run and preflight admit it, before the device is touched
    plan = admit(cfg, world_size=world, train_records=train_records).steps
    for change in plan.adjusted:
        log.warning("the plan moves %s", change)
    configure(t.device_target, t.seed)
    rank, ranks = _init_distributed()
    if ranks != world:
        raise LaunchError(f"rank {rank} joined a group of {ranks}, but its launcher planned {world} ranks "
                          "(RANK_SIZE / MS_WORKER_NUM)")
    dataset = _dataset(cfg, data_dir, rank, ranks)
    steps_per_epoch = dataset.get_dataset_size()
    if steps_per_epoch != plan.steps_per_epoch:
        raise DataError(
            f"MindSpore's dataset gives rank {rank} of {ranks} {steps_per_epoch} batches per epoch, but the plan "
            f"(`sknet launch --dry-run`) counted {plan.steps_per_epoch} from {train_records:,} records: the plan "
            "would lie about this run's sink and cadence; please report this")
    rates = learning_rates(
        t.lr_schedule, base_lr=t.base_lr, total_steps=steps_per_epoch * t.epochs, steps_per_epoch=steps_per_epoch,
        warmup_epochs=t.warmup_epochs, warmup_start_lr=t.warmup_start_lr, end_lr=t.end_lr,
        poly_power=t.poly_power,
    )
    network = build_model(cfg.model.name, cfg.model.num_classes, cfg.model.stem)
    if ranks > 1:  # gradients all-reduced in a few fused runs, not one collective per parameter
        sizes = [p.size for p in network.trainable_params()]
        ms.set_auto_parallel_context(all_reduce_fusion_config=fusion_split_indices(sizes))
    _, optimizer_loss_scale = loss_scaling(t)
    optimizer = nn.Momentum(
        _parameter_groups(network, t.weight_decay), learning_rate=ms.Tensor(rates),
        momentum=t.momentum, loss_scale=optimizer_loss_scale,
    )
    train_step = build_train_step(network, optimizer, nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), t)
    return _Training(cfg, output_dir, uploads, rank, ranks, steps_per_epoch, rates, network, train_step,
                     ms.train.Model(train_step), dataset, DivergenceGuard(t.divergence_patience, t.max_loss), plan)


def _resume(run: _Training) -> int:
    """Load the newest checkpoint that verifies, if any (damaged ones are named and skipped), and drop metrics
    past it; returns the step to continue from."""
    start_step = 0
    latest = latest_verified_checkpoint(run.output_dir)
    if latest is not None:
        start_step, path = latest
        if start_step > run.total_steps:
            raise CheckpointError(
                f"checkpoint {path} is of step {start_step}, past this run's last step {run.total_steps} "
                f"({run.cfg.train.epochs} epochs × {run.steps_per_epoch} steps): it is another run's, or "
                "train.epochs shrank. Use another train.output_dir, or --fresh to move that run aside")
        load_into(run.train_step, path, what="training state", verified=True)  # latest_verified_checkpoint did
        log.info("resuming from %s (step %d of %d)", path, start_step, run.total_steps)
    if run.rank == 0:
        _truncate_metrics(run.output_dir / METRICS_FILE, after_step=start_step)
    return start_step


def _record(run: _Training, start_step: int, step: int, loss: float, started: float, synthetic: bool,
            progress: Progress) -> TrainResult:
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
        startup_seconds=progress.startup_seconds,
    )
    if run.rank == 0:
        (output_dir / RESULT_FILE).write_text(dumps(result.to_dict(), indent=2) + "\n")
    rank_record = {"rank": run.rank, "ranks": run.ranks, "shard_id": run.rank, "num_shards": run.ranks,
                   "steps": step, "batches_per_epoch": run.steps_per_epoch,
                   "parameters_sha256": parameters_digest(run.network), "all_reduce_fusion": _fusion_config(run)}
    (output_dir / rank_record_file(run.rank)).write_text(dumps(rank_record, indent=2) + "\n")
    return result


def _fusion_config(run: _Training) -> list[int] | None:
    """The gradient all-reduce fusion cut points this rank compiled with (None on one rank)."""
    import mindspore as ms

    return ms.get_auto_parallel_context("all_reduce_fusion_config") if run.ranks > 1 else None


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


def _planned_world_size() -> int:
    """The group this rank is launched into: RANK_SIZE (a rank table; msrun exports it too), MS_WORKER_NUM
    (MindSpore's dynamic cluster), else 1 (`sknet train` alone)."""
    for name in ("RANK_SIZE", "MS_WORKER_NUM"):
        if os.environ.get(name, "").isdigit() and int(os.environ[name]) > 0:
            return int(os.environ[name])
    return 1


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
