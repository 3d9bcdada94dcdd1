"""Real training of the tiny SKNet on CPU, through the `sknet` command and in fresh processes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_json, run_sknet

pytestmark = pytest.mark.slow

SHORT = ["data.num_train_samples=192", "train.epochs=2", "train.checkpoint_every_steps=4",
         "train.log_every_steps=1", "train.keep_checkpoints=5"]  # 6 steps per epoch, 12 in all


def train_until(out, data, *extra, stop_after_steps=None):
    """One training process, optionally stopped at a step boundary as a preempted run would be."""
    overrides = [f"data.uri={data}", f"train.output_dir={out}", *SHORT, *extra]
    code = (
        "import json, sys; from sknet.config import load_config; from sknet.training.loop import train; "
        f"r = train(load_config('cpu-smoke', {overrides!r}), stop_after_steps={stop_after_steps!r}); "
        "print(json.dumps(r.to_dict()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "GLOG_v": "3"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def weights(checkpoint):
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(checkpoint)).items()}


def assert_same_weights(a, b):
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    different = [k for k in first if not np.array_equal(first[k], second[k])]
    assert not different, f"{len(different)} tensors differ, first: {different[:3]}"


@pytest.fixture(scope="module")
def reference(synthetic_data, tmp_path_factory):
    return train_until(tmp_path_factory.mktemp("reference"), synthetic_data)


def test_smoke_profile_learns_well_above_chance(smoke_run, synthetic_data):
    assert smoke_run["synthetic_data"] is True
    metrics = run_json("-q", "eval", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                       "--checkpoint", smoke_run["checkpoint"])
    assert set(metrics) >= {"top_1_accuracy", "top_5_accuracy", "loss", "samples"}
    assert metrics["samples"] == 320
    assert metrics["top_1_accuracy"] > 0.5  # chance is 0.1
    assert metrics["top_5_accuracy"] >= metrics["top_1_accuracy"]


def test_metrics_log_has_one_record_per_logged_step_and_epoch(smoke_run):
    lines = open(os.path.join(smoke_run["output_dir"], "metrics.jsonl")).read().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r for r in records if r["event"] == "step"]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["step"] for r in steps] == list(range(5, 61, 5))
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(r["images_per_sec"] > 0 and r["lr"] >= 0 and np.isfinite(r["loss"]) for r in steps)
    assert epochs[-1]["loss"] < epochs[0]["loss"]


def test_a_finished_run_is_not_trained_again(reference, synthetic_data):
    again = train_until(reference["output_dir"], synthetic_data)
    assert again["resumed_from_step"] == 12 and again["steps"] == 12


def test_training_refuses_bad_data_before_compiling(synthetic_data, tmp_path):
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={tmp_path}",
                     f"train.output_dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert "missing data_batch_1.bin" in proc.stderr


def test_too_few_samples_for_one_batch_is_an_error(synthetic_data, tmp_path):
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     "data.num_train_samples=8", f"train.output_dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert "gives no full batch of train.batch_size=32" in proc.stderr


def test_sigterm_checkpoints_at_the_next_step_and_a_rerun_finishes_as_if_never_stopped(reference, synthetic_data,
                                                                                     tmp_path):
    import signal

    command = [sys.executable, "-m", "sknet", "train", "--config", "cpu-smoke", "--set",
               f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}", *SHORT, "train.checkpoint_every_steps=0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "GLOG_v": "3"})
    for line in process.stderr:
        if "step 3/12" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stderr.read()
    assert process.wait(120) == 143, rest[-2000:]
    assert "stopped by SIGTERM at step" in rest
    stopped = json.loads((tmp_path / "result.json").read_text())
    assert stopped["complete"] is False and 3 <= stopped["steps"] < 12
    assert (tmp_path / "checkpoints" / f"step-{stopped['steps']:08d}.ckpt").exists()
    finished = run_json("-q", "train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                        f"train.output_dir={tmp_path}", *SHORT, "train.checkpoint_every_steps=0")
    assert finished["complete"] is True and finished["resumed_from_step"] == stopped["steps"]
    cache = [p.name for p in (tmp_path / "compile-cache").iterdir()]
    assert len(cache) == 1, cache  # the rerun used the first run's compile cache entry (same code and settings)
    assert_same_weights(reference["checkpoint"], finished["checkpoint"])


def test_sigterm_during_start_up_exits_at_once_instead_of_waiting_for_a_step(synthetic_data, tmp_path):
    import signal

    command = [sys.executable, "-m", "sknet", "train", "--config", "cpu-smoke", "--set",
               f"data.uri={synthetic_data}", f"train.output_dir={tmp_path}", *SHORT]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "GLOG_v": "3"})
    for line in process.stderr:
        if "training sknet_tiny" in line:  # logged just before Model.train compiles the graph
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stderr.read()
    assert process.wait(60) == 143, rest[-2000:]
    assert "SIGTERM during start-up" in rest and " step 1/12 " not in rest  # not after a compile and a step
    assert not (tmp_path / "checkpoints").exists()  # nothing half-written: no step ran


def test_a_crashed_run_resumed_on_another_machine_equals_an_uninterrupted_run(reference, synthetic_data, tmp_path,
                                                                             s3_server, bucket):
    from sknet.storage import S3Store
    from sknet.training.checkpoint import CheckpointMirror

    mirror = [f"train.checkpoint_mirror=s3://{bucket}/runs/r1/checkpoints",
              f"storage.endpoint_url={s3_server.endpoint}"]
    partial = train_until(tmp_path / "machine-a", synthetic_data, *mirror, stop_after_steps=7)
    assert partial["steps"] == 7
    store = S3Store(f"s3://{bucket}/runs/r1/checkpoints", endpoint_url=s3_server.endpoint)
    assert CheckpointMirror(store).steps() == [4, 7]
    # a crash loses the work since the last periodic checkpoint (step 4): drop the step-7 save
    store.delete("step-00000007.ckpt")
    resumed = train_until(tmp_path / "machine-b", synthetic_data, *mirror)  # nothing local there
    assert resumed["resumed_from_step"] == 4 and resumed["complete"] is True
    assert_same_weights(reference["checkpoint"], resumed["checkpoint"])
    logged = [json.loads(line)["step"] for line in open(tmp_path / "machine-b" / "metrics.jsonl")
              if json.loads(line)["event"] == "step"]
    assert logged == list(range(1, 13))  # the log came along; replayed steps are not logged twice
    assert CheckpointMirror(store).steps()[-1] == 12


def test_an_unreachable_mirror_fails_before_compiling(synthetic_data, tmp_path, s3_server):
    proc = run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     f"train.output_dir={tmp_path}", "train.checkpoint_mirror=s3://no-such-bucket/ckpt",
                     f"storage.endpoint_url={s3_server.endpoint}", check=False)
    assert proc.returncode == 2
    assert "s3://no-such-bucket/ckpt" in proc.stderr and "NoSuchBucket" in proc.stderr
