"""The training code Ascend runs, run on CPU: MindSpore's `Model.train` with our callbacks, one compiled graph
per run, the step's real outputs under loss scaling, and the sink bookkeeping — where MindSpore cannot build
the Ascend part here, through a stand-in that keeps its contract (tests/standins.py says which)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import SHORT, assert_same_weights

pytestmark = pytest.mark.slow

STANDINS = Path(__file__).with_name("standins.py")
# 128 samples in batches of 16: 8 steps per epoch, 24 in all; every step logged, a checkpoint due every 4 steps
EIGHT_STEP_EPOCHS = ["data.num_train_samples=128", "train.batch_size=16", "train.epochs=3",
                     "train.log_every_steps=1", "train.checkpoint_every_steps=4", "train.keep_checkpoints=10"]
# amp O2 computes in fp16 on CPU too: with a scale of 2^20 its first gradients overflow, as on an NPU
LOSS_SCALED = [*SHORT, "train.log_every_steps=1", "train.checkpoint_every_steps=2", "train.keep_checkpoints=10",
               "train.amp_level=O2", "train.loss_scale=1048576"]


def run(out: Path, data, overrides, **options) -> dict:
    """One training process through tests/standins.py: {"result": …, "compiles": {cell: count}}."""
    args = {"overrides": [f"data.uri={data}", f"train.output_dir={out}", *overrides], **options}
    proc = subprocess.run([sys.executable, str(STANDINS), json.dumps(args)], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "GLOG_v": "3"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def records(out: Path, event: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def checkpointed(out: Path) -> list[int]:
    return sorted(int(p.name[5:13]) for p in (out / "checkpoints").glob("step-*.ckpt"))


@pytest.fixture(scope="module")
def loss_scaled(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("loss-scaled")
    return out, run(out, synthetic_data, LOSS_SCALED, loss_scaling=True)


@pytest.fixture(scope="module")
def sunk(synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sunk")
    return out, run(out, synthetic_data, EIGHT_STEP_EPOCHS, sink=4)


def test_the_loss_scaling_cells_outputs_are_read_and_overflowed_steps_are_counted(loss_scaled):
    out, ran = loss_scaled
    assert ran["result"]["complete"] is True and ran["compiles"] == {"InfNanLossScaleCell": 1}
    steps = records(out, "step")
    overflowed = [r["step"] for r in steps if r["overflow"]]
    assert overflowed and len(overflowed) < len(steps)  # some updates skipped, training went on
    scales = {r["step"]: r["loss_scale"] for r in steps}
    for step in overflowed:  # MindSpore's dynamic scale halves on each overflow (scale_factor 2)
        assert scales[step] == scales.get(step - 1, 1048576) / 2
    epochs = records(out, "epoch")
    assert sum(r["skipped_steps"] for r in epochs) == len(overflowed)
    assert [r["loss_scale"] for r in epochs] == [scales[6], scales[12]]
    # a skipped update leaves the learning-rate schedule where it was: the next step logs the same rate
    assert steps[overflowed[0]]["lr"] == steps[overflowed[0] - 1]["lr"]


def test_a_checkpoint_is_never_an_overflowed_step_and_waits_for_the_next(loss_scaled):
    out, _ = loss_scaled
    overflow = {r["step"]: r["overflow"] for r in records(out, "step")}
    saved = checkpointed(out)
    assert saved and not any(overflow[step] for step in saved)
    for due in range(2, 13, 2):  # the cadence: each due step, or the first clean one after it, is saved
        first_clean = next(s for s in range(due, 13) if not overflow[s])
        assert first_clean in saved


def test_a_loss_scaled_run_resumed_mid_epoch_equals_the_uninterrupted_one(loss_scaled, synthetic_data, tmp_path):
    out, ran = loss_scaled
    stopped = run(tmp_path, synthetic_data, LOSS_SCALED, loss_scaling=True, stop_after_steps=7)
    assert stopped["result"]["steps"] == 7
    resumed = run(tmp_path, synthetic_data, LOSS_SCALED, loss_scaling=True)
    assert resumed["result"]["resumed_from_step"] == 7 and resumed["result"]["complete"] is True
    assert_same_weights(ran["result"]["checkpoint"], resumed["result"]["checkpoint"])  # scale and skips too


def test_with_a_sink_the_callbacks_act_once_per_sink_at_its_global_step(sunk):
    out, ran = sunk
    assert ran["result"]["complete"] is True and ran["result"]["steps"] == 24
    assert ran["compiles"] == {"TrainOneStepCell": 1}  # one graph for the run's three epochs
    assert [r["step"] for r in records(out, "step")] == [4, 8, 12, 16, 20, 24]  # log_every_steps=1: each sink
    assert [(r["epoch"], r["step"]) for r in records(out, "epoch")] == [(1, 8), (2, 16), (3, 24)]
    assert checkpointed(out) == [4, 8, 12, 16, 20, 24]


def test_a_sunk_run_resumed_at_a_sink_boundary_equals_the_uninterrupted_one_and_the_unsunk_one(
        sunk, synthetic_data, tmp_path):
    _, ran = sunk
    stopped = run(tmp_path / "sunk", synthetic_data, EIGHT_STEP_EPOCHS, sink=4, stop_after_steps=12)
    assert stopped["result"]["steps"] == 12  # the third sink, mid-epoch 2
    resumed = run(tmp_path / "sunk", synthetic_data, EIGHT_STEP_EPOCHS, sink=4)
    assert resumed["result"]["resumed_from_step"] == 12 and resumed["result"]["complete"] is True
    assert_same_weights(ran["result"]["checkpoint"], resumed["result"]["checkpoint"])
    unsunk = run(tmp_path / "unsunk", synthetic_data, EIGHT_STEP_EPOCHS)  # the host only looks less often
    assert unsunk["compiles"] == {"TrainOneStepCell": 1}  # MindSpore's own loop on CPU: one graph, 3 epochs
    assert_same_weights(ran["result"]["checkpoint"], unsunk["result"]["checkpoint"])
