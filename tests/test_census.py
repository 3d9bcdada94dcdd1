"""The data census staging takes (issue #20 §5): class counts per split, exact duplicate images, and the skew check
that refuses a dataset with a class missing or off its split's mean, unless the skew is allowed. Staged for real
into a file:// store and moto's S3 server, fetched back, and carried through lineage into the release's model card."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_sknet
from sknet.data.census import (
    DEFAULT_MAX_CLASS_SKEW,
    census_lines,
    census_markdown,
    read_census,
    take_census,
)
from sknet.data.layout import CLASS_NAMES, IMAGE_BYTES, LAYOUT_DIR, RECORD_BYTES, TEST_FILE
from sknet.data.stage import stage_dataset
from sknet.errors import ConfigError, DataError
from sknet.storage import LocalStore, S3Store

S3_PREFIX = "census"
CAT, DOG, FROG, HORSE = (CLASS_NAMES.index(name) for name in ("cat", "dog", "frog", "horse"))

# (target file, record) gets the image bytes of (source file, record); labels stay, so the classes stay balanced
PLANTED = [
    (("data_batch_2.bin", 10), ("data_batch_1.bin", 0)),  # batch 1 record 0: three copies in train (2 extra)
    (("data_batch_3.bin", 20), ("data_batch_1.bin", 0)),
    (("data_batch_5.bin", 30), ("data_batch_4.bin", 40)),  # a pair across train files (1 extra)
    (("data_batch_1.bin", 5), ("data_batch_1.bin", 6)),  # a pair within one file (1 extra)
    ((TEST_FILE, 100), (TEST_FILE, 200)),  # three copies in test (2 extra)
    ((TEST_FILE, 300), (TEST_FILE, 200)),
    ((TEST_FILE, 500), ("data_batch_2.bin", 600)),  # three test images that are train images
    ((TEST_FILE, 501), ("data_batch_2.bin", 601)),
    ((TEST_FILE, 502), ("data_batch_1.bin", 0)),
]
PLANTED_TRAIN, PLANTED_TEST, PLANTED_ACROSS = 4, 2, 3


def layout_copy(synthetic_data: Path, root: Path) -> Path:
    """A copy of the session's synthetic layout under `root` (the layout's parent, as `sknet data synth` writes)."""
    shutil.copytree(Path(synthetic_data) / LAYOUT_DIR, root / LAYOUT_DIR)
    return root


def plant_duplicates(root: Path) -> Path:
    layout = root / LAYOUT_DIR
    for (target, at), (source, source_at) in PLANTED:
        with open(layout / source, "rb") as stream:
            stream.seek(source_at * RECORD_BYTES + 1)
            image = stream.read(IMAGE_BYTES)
        with open(layout / target, "r+b") as stream:
            stream.seek(at * RECORD_BYTES + 1)
            stream.write(image)
    return root


def relabel(path: Path, old: int, new: int, count: int | None = None) -> None:
    """Give the first `count` records of class `old` in `path` (all when None) the label `new`."""
    records = np.memmap(path, dtype=np.uint8, mode="r+").reshape(-1, RECORD_BYTES)
    records[np.flatnonzero(records[:, 0] == old)[:count], 0] = new
    records.flush()
    del records


def make_skewed(root: Path) -> Path:
    """Train: 600 cats relabelled dogs (4,400 vs 5,600: 12 % off the mean). Test: every frog a horse (0 vs 2,000)."""
    relabel(root / LAYOUT_DIR / "data_batch_1.bin", CAT, DOG, 600)
    relabel(root / LAYOUT_DIR / TEST_FILE, FROG, HORSE)
    return root


@pytest.fixture(scope="module")
def planted(synthetic_data, tmp_path_factory):
    root = plant_duplicates(layout_copy(synthetic_data, tmp_path_factory.mktemp("planted")))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def skewed(synthetic_data, tmp_path_factory):
    root = make_skewed(layout_copy(synthetic_data, tmp_path_factory.mktemp("skewed")))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def datasets_of(store):
    """The store's `datasets/cifar10` prefix, where a run's `data.allowed_prefixes` admits datasets by default."""
    if isinstance(store, LocalStore):
        return LocalStore(store.root / "datasets" / "cifar10")
    return S3Store(f"{store.uri}/datasets/cifar10", client=store.client)


def test_a_balanced_layout_has_every_class_at_its_mean_and_no_duplicates(synthetic_data):
    started = time.perf_counter()
    census = take_census(Path(synthetic_data) / LAYOUT_DIR)
    seconds = time.perf_counter() - started
    assert census["splits"]["train"] == {"records": 50_000, "classes": dict.fromkeys(CLASS_NAMES, 5_000),
                                         "duplicates": 0}
    assert census["splits"]["test"] == {"records": 10_000, "classes": dict.fromkeys(CLASS_NAMES, 1_000),
                                        "duplicates": 0}
    assert census["test_in_train"] == 0 and census["skewed"] == [] and census["skew_allowed"] is False
    assert census["max_class_skew"] == DEFAULT_MAX_CLASS_SKEW == 0.1
    print(f"census of 60,000 images: {seconds:.2f} s")
    assert seconds < 30  # ≈0.3 s alone on one core: hashing is per image, not per pixel


def test_planted_duplicates_are_counted_exactly_and_staged_not_refused(planted, store):
    staged = stage_dataset(str(planted), store)
    assert staged.published
    census = staged.census
    assert (census["splits"]["train"]["duplicates"], census["splits"]["test"]["duplicates"],
            census["test_in_train"]) == (PLANTED_TRAIN, PLANTED_TEST, PLANTED_ACROSS)
    assert census["skewed"] == []  # only images were copied: every label, so every class count, stayed
    assert json.loads(store.get_bytes(f"{staged.digest}/manifest.json"))["census"] == census


def test_a_skewed_dataset_is_refused_naming_each_class_before_anything_is_uploaded(skewed, store):
    with pytest.raises(DataError) as refused:
        stage_dataset(str(skewed), store)
    message = str(refused.value)
    assert message.startswith(f"{skewed}: refusing to stage a skewed dataset")
    assert "train class 'cat': 4,400 images, 12% below the split's mean of 5,000" in message
    assert "train class 'dog': 5,600 images, 12% above the split's mean of 5,000" in message
    assert "test class 'frog': no images (missing; the split's mean is 1,000)" in message
    assert "test class 'horse': 2,000 images, 100% above" in message
    assert "--max-class-skew 0.1 (10%)" in message and "--allow-skew" in message
    assert list(store.list()) == []  # nothing half-staged


def test_a_wider_max_class_skew_passes_a_thinned_class_but_never_a_missing_one(skewed, tmp_path):
    with pytest.raises(DataError) as refused:
        stage_dataset(str(skewed), LocalStore(tmp_path / "store"), max_class_skew=0.2)
    assert "test class 'frog': no images" in str(refused.value) and "'cat'" not in str(refused.value)
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").iterdir()) == []


def test_a_bad_max_class_skew_is_refused_before_the_source_is_read(tmp_path):
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--max-class-skew .*expected a fraction ≥ 0"):
            stage_dataset(str(tmp_path / "no-such-source"), LocalStore(tmp_path / "store"), max_class_skew=bad)


def release_on(cfg, dataset: dict, tmp_path: Path) -> tuple[dict, str]:
    """`release_model` of stand-in model files trained on `dataset`: (its lineage record, its model card)."""
    from sknet.plan import RunPlan
    from sknet.run_outputs import release_model
    from sknet.storage import sha256_file

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, body in (("model.mindir", "mindir"), ("step-60.ckpt", "ckpt"), ("config.yaml", cfg.to_yaml())):
        (run_dir / name).write_text(body)
    plan = RunPlan(run_id="v1", output_dir=str(run_dir), cache_dir=str(tmp_path / "cache"),
                   store_uri=cfg.storage.uri, model="sknet-tiny")
    model = {"path": str(run_dir / "model.mindir"), "sha256": sha256_file(run_dir / "model.mindir"),
             "input_shape": [1, 3, 32, 32], "dynamic_batch": False, "max_abs_diff": 0.0, "parameters": 1}
    run = {"step": 60, "checkpoint": str(run_dir / "step-60.ckpt"),
           "checkpoint_sha256": sha256_file(run_dir / "step-60.ckpt")}
    metrics = {"top_1_accuracy": 0.9, "top_5_accuracy": 0.99, "loss": 0.3, "samples": 320, "synthetic_data": True}
    _, lineage, card = release_model(cfg, plan, dataset, run, metrics, model)
    return lineage, card


def test_with_allow_skew_it_is_staged_and_the_release_trained_on_it_says_the_skew_was_allowed(
        skewed, store, request, tmp_path):
    from sknet.config import load_config
    from sknet.data.source import resolve_dataset

    staged = stage_dataset(str(skewed), datasets_of(store), allow_skew=True)
    assert staged.published and staged.census["skew_allowed"] is True
    assert [(e["split"], e["class"], e["count"]) for e in staged.census["skewed"]] == [
        ("train", "cat", 4_400), ("train", "dog", 5_600), ("test", "frog", 0), ("test", "horse", 2_000)]

    endpoint = {"storage.endpoint_url": request.getfixturevalue("s3_server").endpoint} \
        if store.uri.startswith("s3://") else {}
    cfg = load_config("cpu-smoke", {"storage.uri": store.uri, "data.uri": staged.uri, **endpoint})
    dataset = resolve_dataset(cfg, tmp_path / "cache")  # fetched: the census comes from the staged manifest
    assert dataset.census == staged.census
    lineage, card = release_on(cfg, dataset.to_dict(), tmp_path)
    assert lineage["dataset"]["census"] == staged.census
    data = card.split("## Data\n", 1)[1].split("\n## ", 1)[0]
    assert "- data census: train 50,000 images, 4,400–5,600 per class; test 10,000 images, 0–2,000 per class; " \
           "**class skew allowed** (--allow-skew): train class 'cat': 4,400 images, 12% below" in data
    assert "test class 'frog': no images (missing; the split's mean is 1,000)" in data
    assert "- exact duplicate images: 0 within train, 0 within test, 0 test images also in train" in data


def test_sknet_data_stage_refuses_skew_names_the_flag_and_stages_with_allow_skew(skewed, tmp_path):
    dest = f"file://{tmp_path}/datasets"
    refused = run_sknet("data", "stage", "--source", str(skewed), "--dest", dest, check=False)
    assert refused.returncode == 2 and "test class 'frog': no images" in refused.stderr
    assert "stage it anyway with --allow-skew" in refused.stderr and not (tmp_path / "datasets").exists()
    staged = json.loads(run_sknet("data", "stage", "--source", str(skewed), "--dest", dest,
                                  "--max-class-skew", "0.5", "--allow-skew").stdout)
    assert staged["published"] and staged["census"]["max_class_skew"] == 0.5
    assert [e["class"] for e in staged["census"]["skewed"]] == ["frog", "horse"] and staged["census"]["skew_allowed"]


def test_a_local_layout_carries_its_census_into_the_run(synthetic_data, tmp_path):
    from sknet.config import load_config
    from sknet.data.source import resolve_dataset

    cfg = load_config("cpu-smoke", {"data.uri": str(synthetic_data), "data.allowed_prefixes": [str(synthetic_data)]})
    census = resolve_dataset(cfg, tmp_path / "cache").census
    assert census["splits"]["test"]["classes"] == dict.fromkeys(CLASS_NAMES, 1_000) and census["skewed"] == []


def test_a_census_not_shaped_as_staging_writes_it_is_ignored_and_values_are_rendered_as_text(synthetic_data):
    from test_escaping_and_redaction import HOSTILE, check_rendered_as_text

    census = take_census(Path(synthetic_data) / LAYOUT_DIR, max_class_skew=0.0)
    assert read_census({"census": census}) == census
    bad = [{**census, "test_in_train": "0"}, {**census, "skewed": [{"split": "train", "class": HOSTILE, "count": 1,
                                                                     "mean": 1.0, "off": 0.0}]},
           {**census, "splits": {"train": census["splits"]["train"]}}, {**census, "skew_allowed": None}, None]
    assert [read_census({"census": value}) for value in bad] == [None] * len(bad)
    assert census_lines(None) == ["- data census: not recorded for this dataset (staged before staging took one)"]
    check_rendered_as_text(census_markdown(census, HOSTILE), census_markdown(census, "s3://b/d"), [HOSTILE])


def test_make_stage_forwards_the_skew_flags_as_the_flow_parameters_prefect_reads():
    import shlex
    import subprocess

    from prefect.cli._utilities import load_json_key_values

    from infra.stage import stage_command

    def stage_args(*variables: str) -> list[str]:
        """The arguments `make stage` gives `python -m infra.stage` (make -n: printed, not run)."""
        printed = subprocess.run(["make", "-n", "--no-print-directory", "stage", *variables],
                                 cwd=Path(__file__).parents[1], capture_output=True, text=True, check=True).stdout
        [line] = [line for line in printed.replace("\\\n", " ").splitlines() if "-m infra.stage" in line]
        words = shlex.split(line)
        return words[words.index("infra.stage") + 1:]

    def parameters(command: list[str]) -> dict:
        return load_json_key_values([command[i + 1] for i, arg in enumerate(command) if arg == "--param"], "parameter")

    assert stage_args("SOURCE=/data/thinned", "MAX_CLASS_SKEW=0.2", "ALLOW_SKEW=1") == [
        "--source", "/data/thinned", "--max-class-skew", "0.2", "--allow-skew"]
    assert stage_args("SOURCE=/data/seed7") == ["--source", "/data/seed7"]
    assert parameters(stage_command("/data/thinned", None, 0.2, True)) == {
        "source": "/data/thinned", "max_class_skew": 0.2, "allow_skew": True}
    assert parameters(stage_command("/data/seed7", None)) == {"source": "/data/seed7"}  # the flow's defaults
