"""Two training smokes over every rank of the plan, through the real launcher and training loop, on synthetic
data shaped like the config's (its model, batch, precision and loss scale; a few steps):

- `check_sink_smoke`: 2 epochs × 2 sinks. Passes when the step advances by the sink size at each sink (each
  logged step), no later sink takes much longer than the others (a recompile at an epoch's start would), host
  memory stays flat, and reports the steady ms/step beside the model zoo's.
- `check_sigterm`: SIGTERM to the launcher once training runs. Passes when it exits as signalled, every rank
  stopped after the same step, and the checkpoint of that step verifies.
Without a sink (CPU) a "sink" is a window of steps logged together: the checks run the same way.
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sknet.config import Config
from sknet.errors import CheckpointError, LaunchError
from sknet.preflight.runner import Context, Failed, Outcome, Skip
from sknet.preflight.tools import has_tool
from sknet.run_files import LAUNCH_FILE, METRICS_FILE, rank_record_file
from sknet.training.steps import MIN_SINK_STEPS
from sknet.training.train_log import parse_step_line

CPU_WINDOW_STEPS = 4  # steps per logged window without a sink
EPOCHS, SINKS_PER_EPOCH = 2, 2
ZOO_MS_PER_STEP = 181  # SKNet-50, CIFAR-10 at 224 px, 8 × Ascend 910, batch 32 per device, sink mode (model zoo)
RECOMPILE_FACTOR = 3.0  # a later sink this many times slower than the others' slowest: compiled again
MEMORY_GROWTH = 0.10  # host memory may grow this much from the second sink to the last
TIMEOUT_MINUTES = 20.0
SIGTERM_WAIT_SECONDS = 600


def _smoke(ctx: Context, epochs: int) -> tuple[Config, int, Path]:
    """The config's training shrunk to `epochs` × SINKS_PER_EPOCH sinks on synthetic data: (config, sink, scratch)."""
    cfg = ctx.cfg
    if cfg.train.device_target == "Ascend" and not has_tool("npu-smi"):
        raise Skip("train.device_target=Ascend but npu-smi not found on PATH: not an Ascend host")
    sink = CPU_WINDOW_STEPS if cfg.train.device_target == "CPU" else MIN_SINK_STEPS
    samples = SINKS_PER_EPOCH * sink * cfg.train.batch_size * cfg.launch.ranks
    ctx.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="training-", dir=ctx.work)).resolve()
    smoke = cfg.override({
        "data.uri": str(_synthetic_data(cfg, ctx.work)), "data.num_train_samples": samples, "train.epochs": epochs,
        "train.sink_size": sink, "train.log_every_steps": sink, "train.checkpoint_every_steps": 0,
        "train.output_dir": str(scratch), "train.checkpoint_mirror": "", "launch.timeout_minutes": TIMEOUT_MINUTES})
    return smoke, sink, scratch


def _synthetic_data(cfg: Config, work: Path) -> Path:
    """`data.uri` when it is a local layout that verifies, else a synthetic one under `work` (made once)."""
    from sknet.data import verify_layout, write_synthetic_layout
    from sknet.errors import DataError
    from sknet.storage import is_object_store_uri

    local = [cfg.data.uri] if cfg.data.uri and not is_object_store_uri(cfg.data.uri) else []
    for candidate in (*local, work / "data"):
        try:
            return verify_layout(candidate).path
        except DataError:
            continue
    return write_synthetic_layout(work / "data", overwrite=True)


def _sink_seconds(records: list[dict], sink: int, images_per_step: int) -> list[float]:
    return [sink * images_per_step / r["images_per_sec"] for r in records]


def check_sink_smoke(ctx: Context) -> Outcome:
    """2 epochs × 2 sinks of the config's training: one compile, the step advancing by the sink size."""
    from sknet.launch.launcher import launch

    smoke, sink, scratch = _smoke(ctx, EPOCHS)
    try:
        launch(smoke, on_line=lambda line: None)
    except LaunchError as exc:
        raise Failed(f"the training smoke failed (logs in {scratch / 'logs'}): {exc}") from None
    steps = [r for r in map(json.loads, (scratch / METRICS_FILE).read_text().splitlines()) if r["event"] == "step"]
    expected = [sink * n for n in range(1, EPOCHS * SINKS_PER_EPOCH + 1)]
    if [r["step"] for r in steps] != expected:
        raise Failed(f"the global step went {[r['step'] for r in steps]}, expected {expected} ({sink} steps per "
                     f"sink; logs in {scratch / 'logs'})")
    outcome = _judge_sinks(steps, sink, smoke.train.batch_size * smoke.launch.ranks, smoke)
    shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def _judge_sinks(steps: list[dict], sink: int, images_per_step: int, smoke: Config) -> Outcome:
    """No recompile (a later sink much slower than the others), flat host memory; the steady ms/step."""
    first, *later = _sink_seconds(steps, sink, images_per_step)
    for index, seconds in enumerate(later):
        others = later[:index] + later[index + 1:]
        if seconds > RECOMPILE_FACTOR * max(others):
            raise Failed(f"sink {index + 2} took {seconds:.1f} s, over {RECOMPILE_FACTOR:g}× the other later sinks "
                         f"({', '.join(f'{s:.1f}' for s in others)} s): the graph was compiled again (one compile "
                         "per run expected)")
    rss = [r["rss_mb"] for r in steps[1:]]
    if rss[-1] > rss[0] * (1 + MEMORY_GROWTH):
        raise Failed(f"rank 0's host memory grew from {rss[0]:.0f} MB to {rss[-1]:.0f} MB between the second and "
                     f"the last sink (more than {MEMORY_GROWTH:.0%})")
    ms_per_step = 1000 * statistics.median(later) / sink
    zoo = (f" (model zoo: {ZOO_MS_PER_STEP} ms/step for SKNet-50 on 8 × Ascend 910)"
           if smoke.model.name == "sknet50" and smoke.train.device_target == "Ascend" else "")
    detail = (f"{len(steps)} sinks of {sink} steps, the step advancing by {sink} each; start-up (compile) "
              f"{first:.1f} s, then {ms_per_step:.0f} ms/step steady{zoo}; host memory {rss[0]:.0f} → {rss[-1]:.0f} MB")
    return Outcome(detail, {"sink_size": sink, "startup_seconds": round(first, 2),
                            "ms_per_step": round(ms_per_step, 1), "rss_mb": rss})


def check_sigterm(ctx: Context) -> Outcome:
    """SIGTERM to a running launcher: every rank stops after the same step with a checkpoint that verifies."""
    from sknet.training.checkpoint import checkpoint_path, verify_checkpoint

    smoke, _, scratch = _smoke(ctx, epochs=EPOCHS * 10)  # long enough never to finish first
    config = scratch.with_suffix(".yaml")
    config.write_text(smoke.to_yaml())
    _launch_and_sigterm(config, scratch)
    local = json.loads((scratch / LAUNCH_FILE).read_text())["local_ranks"]
    records = {rank: scratch / rank_record_file(rank) for rank in local}
    steps = {rank: json.loads(path.read_text())["steps"] if path.exists() else None for rank, path in records.items()}
    if None in steps.values() or len(set(steps.values())) != 1:
        raise Failed(f"the ranks did not stop after one and the same step: {steps} (None: no record; logs in "
                     f"{scratch / 'logs'})")
    step = steps[local[0]]
    try:
        record = verify_checkpoint(checkpoint_path(scratch, step))
    except CheckpointError as exc:
        raise Failed(f"every rank stopped after step {step}, but its checkpoint does not verify: {exc}") from None
    shutil.rmtree(scratch, ignore_errors=True)
    config.unlink(missing_ok=True)
    return Outcome(f"{len(steps)} rank(s) stopped after step {step} on SIGTERM; its checkpoint verifies "
                   f"({record['bytes']:,} bytes)", {"step": step, "ranks": len(steps)})


def _launch_and_sigterm(config: Path, scratch: Path) -> None:
    """`sknet launch` in its own process, SIGTERMed at its first step line; it must end by that signal."""
    launcher = subprocess.Popen([sys.executable, "-m", "sknet", "-q", "launch", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stepped = False
    for line in launcher.stderr:
        if line.startswith("[rank ") and parse_step_line(line):
            launcher.send_signal(signal.SIGTERM)  # as a cancelled flow run or a drained node would
            stepped = True
            break
    rest = launcher.stderr.read()
    try:
        code = launcher.wait(SIGTERM_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        launcher.kill()
        raise Failed(f"the launcher did not stop within {SIGTERM_WAIT_SECONDS} s of SIGTERM (logs in "
                     f"{scratch / 'logs'})") from None
    if not stepped or code != -signal.SIGTERM:
        tail = "\n".join(rest.strip().splitlines()[-5:])
        raise Failed(f"expected the launcher to end by SIGTERM after its ranks, it exited {code}"
                     f"{'' if stepped else ' before any step'} (logs in {scratch / 'logs'}):\n{tail}")
