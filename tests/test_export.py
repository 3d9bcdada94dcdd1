"""MINDIR export of the trained smoke model, reloaded and compared through the real command."""

import pytest

from conftest import run_json, run_sknet

pytestmark = pytest.mark.slow


def export(smoke_run, synthetic_data, out, *extra):
    return run_json("-q", "export", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                    "--checkpoint", smoke_run["checkpoint"], "--out", str(out), *extra)


def test_static_batch_export_round_trips(smoke_run, synthetic_data, tmp_path):
    result = export(smoke_run, synthetic_data, tmp_path / "model.mindir")
    assert result["input_shape"] == [1, 3, 32, 32] and result["dynamic_batch"] is False
    assert result["max_abs_diff"] <= 1e-4
    assert result["parameters"] == 666_986  # sknet_tiny, cifar stem, 10 classes: counted from the loaded network
    assert (tmp_path / "model.mindir").stat().st_size == result["bytes"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.mindir"]  # no partial files left


def test_dynamic_batch_export_round_trips(smoke_run, synthetic_data, tmp_path):
    result = export(smoke_run, synthetic_data, tmp_path / "dyn.mindir", "--dynamic-batch")
    assert result["input_shape"] == [None, 3, 32, 32] and result["dynamic_batch"] is True
    assert result["max_abs_diff"] <= 1e-4


def test_score_scores_the_checkpoint_and_then_the_mindir_on_the_same_samples(smoke_run, synthetic_data, tmp_path):
    result = export(smoke_run, synthetic_data, tmp_path / "model.mindir", "--score")
    exported = result["exported_model"]
    assert exported["runtime"] == "mindspore.nn.GraphCell" and exported["samples"] == 320
    assert exported["top_1_accuracy"] == exported["checkpoint_top_1_accuracy"]  # the same model, scored twice
    assert exported["accuracy_tolerance"] == 0.001 and (tmp_path / "model.mindir").stat().st_size == result["bytes"]


def test_score_refuses_a_bad_out_before_evaluating(smoke_run, tmp_path):
    proc = run_sknet("export", "--config", "cpu-smoke", "--set", f"data.uri={tmp_path / 'no-data'}", "--checkpoint",
                     smoke_run["checkpoint"], "--out", str(tmp_path / "model.onnx"), "--score", check=False)
    assert proc.returncode == 2 and "expected a file name ending in .mindir" in proc.stderr  # not the missing data


def test_checkpoint_of_another_model_is_rejected_by_name(smoke_run, synthetic_data, tmp_path):
    proc = run_sknet("eval", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     "model.num_classes=7", "--checkpoint", smoke_run["checkpoint"], check=False)
    assert proc.returncode == 2
    assert f"checkpoint {smoke_run['checkpoint']} does not fit" in proc.stderr


def test_eval_refuses_more_dataset_workers_than_this_hosts_cpus_before_loading_anything(smoke_run, synthetic_data):
    import multiprocessing

    workers = multiprocessing.cpu_count() + 1
    proc = run_sknet("eval", "--config", "cpu-smoke", "--set", f"data.uri={synthetic_data}",
                     f"data.num_parallel_workers={workers}", "--checkpoint", smoke_run["checkpoint"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"data.num_parallel_workers={workers}: expected an integer in [1, {workers - 1}] on this host" in proc.stderr


def test_missing_checkpoint_is_named(synthetic_data, tmp_path):
    proc = run_sknet("export", "--config", "cpu-smoke", "--checkpoint", str(tmp_path / "nope.ckpt"),
                     "--out", str(tmp_path / "m.mindir"), check=False)
    assert proc.returncode == 2 and "nope.ckpt does not exist" in proc.stderr
    assert not (tmp_path / "m.mindir").exists()


def test_output_must_be_a_mindir_file(smoke_run, tmp_path):
    proc = run_sknet("export", "--config", "cpu-smoke", "--checkpoint", smoke_run["checkpoint"],
                     "--out", str(tmp_path / "model.onnx"), check=False)
    assert proc.returncode == 2 and "expected a file name ending in .mindir" in proc.stderr


def test_an_accuracy_tolerance_outside_0_to_1_is_refused_by_key(tmp_path):
    proc = run_sknet("export", "--config", "cpu-smoke", "--set", "export.accuracy_tolerance=1.5",
                     "--checkpoint", str(tmp_path / "any.ckpt"), "--out", str(tmp_path / "m.mindir"), check=False)
    assert proc.returncode == 2
    assert "export.accuracy_tolerance: got 1.5, expected a number in [0, 1]" in proc.stderr
