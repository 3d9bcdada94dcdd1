"""Issue 20 §1, score what ships: the exported MINDIR run through `nn.GraphCell` on the whole eval set, refused
when its top-1 is not the checkpoint's, and its score recorded in lineage.json, the manifest and the model card.

The MindSpore tests run in this process on the session's smoke run: its final checkpoint (step 60) and the one
it kept before it (step 40), a genuinely different model of the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sknet.config import load_config
from sknet.errors import ExportError
from sknet.evaluation.exported import GRAPH_CELL, LITE
from sknet.export import export_scored
from sknet.plan import RunPlan
from sknet.release.model_card import model_card
from sknet.run_outputs import release_model
from sknet.storage import read_manifest, sha256_file
from test_escaping_and_redaction import HOSTILE, check_rendered_as_text
from test_model_card import lineage_of, metrics_of

S3_PREFIX = "exported"


def lite_importable() -> bool:
    try:
        import mindspore_lite  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def scored(smoke_run, synthetic_data):
    """cfg, and the checkpoint metrics of steps 40 and 60 of the smoke run (`sknet.evaluation.evaluate.evaluate`)."""
    from sknet.evaluation.evaluate import evaluate

    cfg = load_config("cpu-smoke", {"data.uri": str(synthetic_data)})
    final = Path(smoke_run["checkpoint"])
    earlier = final.with_name("step-00000040.ckpt")
    assert final.name == "step-00000060.ckpt" and earlier.is_file()
    return {"cfg": cfg, 60: (str(final), evaluate(cfg, str(final))), 40: (str(earlier), evaluate(cfg, str(earlier)))}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{"export.batch_size": 7}, {"export.dynamic_batch": True}],
                         ids=["static-batch-7", "dynamic-batch"])
def test_the_exported_model_scores_as_its_checkpoint_on_the_same_samples(scored, overrides, tmp_path):
    """320 samples, 7 a call: 45 full batches and a last one of 5 padded to 7 for the static graph."""
    cfg = scored["cfg"].override(overrides)
    checkpoint, metrics = scored[60]
    model = export_scored(cfg, checkpoint, tmp_path / "model.mindir", metrics)
    exported = model["exported_model"]
    assert exported["runtime"] == GRAPH_CELL and exported["samples"] == metrics["samples"] == 320
    assert abs(exported["top_1_accuracy"] - metrics["top_1_accuracy"]) <= cfg.export.accuracy_tolerance
    assert abs(exported["top_5_accuracy"] - metrics["top_5_accuracy"]) <= cfg.export.accuracy_tolerance
    assert model["input_shape"][0] == (None if cfg.export.dynamic_batch else 7)
    (lite,) = exported["other_runtimes"]
    assert lite["runtime"] == LITE
    if not lite_importable():
        assert "not importable on Python 3.11" in lite["skipped"] and "no MindSpore Lite wheel" in lite["skipped"]
    assert (tmp_path / "model.mindir").is_file()


@pytest.mark.slow
def test_a_model_that_scores_otherwise_than_the_checkpoint_is_refused_and_removed(scored, tmp_path):
    """The step-40 model exported and scored against the step-60 checkpoint's metrics: a real difference."""
    cfg = scored["cfg"]
    (earlier, theirs), (_, ours) = scored[40], scored[60]
    difference = abs(theirs["top_1_accuracy"] - ours["top_1_accuracy"])
    assert difference > cfg.export.accuracy_tolerance  # the smoke run still learns between steps 40 and 60
    out = tmp_path / "model.mindir"
    with pytest.raises(ExportError) as refused:
        export_scored(cfg, earlier, out, ours)
    message = str(refused.value)
    assert f"model.mindir through {GRAPH_CELL} scores top-1 {theirs['top_1_accuracy']:.6f} on 320 samples" in message
    assert f"the checkpoint {ours['top_1_accuracy']:.6f}: they differ by {difference:.6f}" in message
    assert "above export.accuracy_tolerance=0.001; nothing is released" in message
    assert list(tmp_path.iterdir()) == []  # nothing left to release


def test_checkpoint_metrics_without_a_top_1_are_refused_before_anything_is_built(tmp_path):
    cfg = load_config("cpu-smoke")
    with pytest.raises(ExportError, match=r"expected top_1_accuracy in \[0, 1\] and samples ≥ 1 .* got "
                                          r"top_1_accuracy=None, samples=320"):
        export_scored(cfg, str(tmp_path / "no.ckpt"), tmp_path / "m.mindir", {"samples": 320})
    assert list(tmp_path.iterdir()) == []


def test_more_dataset_workers_than_this_hosts_cpus_are_refused_before_the_export(tmp_path):
    import multiprocessing

    from sknet.errors import ConfigError

    workers = multiprocessing.cpu_count() + 1
    cfg = load_config("cpu-smoke", {"data.num_parallel_workers": workers})
    with pytest.raises(ConfigError, match=rf"^data\.num_parallel_workers={workers}: expected an integer in "):
        export_scored(cfg, str(tmp_path / "no.ckpt"), tmp_path / "m.mindir", {"top_1_accuracy": 0.5, "samples": 320})
    assert list(tmp_path.iterdir()) == []  # refused before the checkpoint was read or anything written


EXPORTED = {"runtime": GRAPH_CELL, "top_1_accuracy": 0.9375, "top_5_accuracy": 1.0, "samples": 320, "seconds": 1.5,
            "checkpoint_top_1_accuracy": 0.9375, "accuracy_tolerance": 0.001,
            "other_runtimes": [{"runtime": LITE, "skipped": "not importable on Python 3.11"}]}


def test_a_release_records_the_exported_score_in_lineage_manifest_and_card(store, request, tmp_path):
    endpoint = {"storage.endpoint_url": request.getfixturevalue("s3_server").endpoint} \
        if store.uri.startswith("s3://") else {}
    cfg = load_config("cpu-smoke", {"storage.uri": store.uri, **endpoint})
    for name, body in (("model.mindir", "mindir"), ("step-60.ckpt", "ckpt"), ("config.yaml", cfg.to_yaml())):
        (tmp_path / name).write_text(body)
    model = {"path": str(tmp_path / "model.mindir"), "sha256": sha256_file(tmp_path / "model.mindir"),
             "input_shape": [1, 3, 32, 32], "dynamic_batch": False, "max_abs_diff": 0.0, "parameters": 98_765,
             "exported_model": EXPORTED}
    run = {"step": 60, "checkpoint": str(tmp_path / "step-60.ckpt"),
           "checkpoint_sha256": sha256_file(tmp_path / "step-60.ckpt")}
    plan = RunPlan(run_id="v1", output_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), store_uri=store.uri,
                   model="sknet-tiny")
    _, lineage, card = release_model(cfg, plan, {"uri": "file:///d", "digest": "d" * 64, "synthetic": True}, run,
                                     metrics_of(0.9375), model)
    stored = json.loads(store.get_bytes("releases/sknet-tiny/v1/lineage.json"))
    assert stored["exported_model"] == lineage["exported_model"] == EXPORTED
    assert "exported_model" not in stored["artifacts"]["model.mindir"]  # the score is recorded once
    assert read_manifest(store, "releases/sknet-tiny/v1")["exported_model"] == EXPORTED
    assert ("- `model.mindir` itself, run through `mindspore.nn.GraphCell`: top-1 **0.9375**, top-5 1.0000 on 320 "
            "test images (the checkpoint's top-1 0.9375, allowed difference 0.001); `mindspore_lite`: skipped — "
            "not importable on Python 3.11") in card


def test_the_exported_score_in_the_card_is_shown_as_text_never_rendered():
    cfg = load_config("cpu-smoke")

    def card(value: str) -> str:
        lineage = lineage_of(cfg, synthetic=True)
        lineage["exported_model"] = {**EXPORTED, "runtime": value,
                                     "other_runtimes": [{"runtime": value, "skipped": value}]}
        return model_card(cfg, lineage, release="sknet-tiny", version="v2", previous=None)

    check_rendered_as_text(card(HOSTILE), card("mindspore.nn.GraphCell"), [HOSTILE])
