import shutil

import numpy as np
import pytest

from conftest import run_sknet
from sknet.data.layout import (
    FILE_BYTES,
    LAYOUT_DIR,
    RECORD_BYTES,
    SYNTHETIC_MARKER,
    TEST_FILE,
    TRAIN_FILES,
    read_labels,
    verify_layout,
)
from sknet.data.synth import synthetic_records, write_synthetic_layout
from sknet.errors import DataError


@pytest.fixture
def data_copy(synthetic_data, tmp_path):
    shutil.copytree(synthetic_data / LAYOUT_DIR, tmp_path / LAYOUT_DIR)
    return tmp_path


def test_synthetic_layout_passes_verification_and_is_marked(synthetic_data):
    report = verify_layout(synthetic_data)
    assert report.synthetic and report.train_records == 50_000 and report.test_records == 10_000
    for name in (*TRAIN_FILES, TEST_FILE):
        assert (synthetic_data / LAYOUT_DIR / name).stat().st_size == FILE_BYTES


def test_synthetic_classes_are_balanced(synthetic_data):
    labels = read_labels(synthetic_data / LAYOUT_DIR / TEST_FILE)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_synthesis_is_deterministic_per_seed():
    assert np.array_equal(synthetic_records(3, 0, count=50), synthetic_records(3, 0, count=50))
    assert not np.array_equal(synthetic_records(3, 0, count=50), synthetic_records(4, 0, count=50))
    assert not np.array_equal(synthetic_records(3, 0, count=50), synthetic_records(3, 1, count=50))


def test_synthetic_classes_differ_in_colour():
    records = synthetic_records(0, 0, count=2000)
    labels, pixels = records[:, 0], records[:, 1:].reshape(-1, 3, 1024).mean(axis=2)
    means = np.stack([pixels[labels == c].mean(axis=0) for c in range(5)])
    assert np.min(np.ptp(means, axis=0)) > 50  # five well separated colours


def test_synth_refuses_to_overwrite_without_force(synthetic_data):
    with pytest.raises(DataError, match="already exists; remove it or pass --force"):
        write_synthetic_layout(synthetic_data)


def test_truncated_file_fails_with_the_file_named(data_copy):
    path = data_copy / LAYOUT_DIR / "data_batch_3.bin"
    with open(path, "r+b") as stream:
        stream.truncate(FILE_BYTES - RECORD_BYTES)
    with pytest.raises(DataError, match=rf"{path}: 30,726,927 bytes, expected 30,730,000"):
        verify_layout(data_copy)


def test_corrupted_label_fails_with_the_file_and_record_named(data_copy):
    path = data_copy / LAYOUT_DIR / TEST_FILE
    with open(path, "r+b") as stream:
        stream.seek(7 * RECORD_BYTES)
        stream.write(bytes([200]))
    with pytest.raises(DataError, match=rf"{path}: record 7 has label 200, expected 0..9"):
        verify_layout(data_copy)


def test_missing_file_is_named(data_copy):
    (data_copy / LAYOUT_DIR / "data_batch_5.bin").unlink()
    with pytest.raises(DataError, match="missing data_batch_5.bin"):
        verify_layout(data_copy)


def test_cli_verify_reports_the_bad_file_and_exits_2(data_copy):
    path = data_copy / LAYOUT_DIR / "data_batch_1.bin"
    with open(path, "r+b") as stream:
        stream.truncate(100)
    proc = run_sknet("data", "verify", str(data_copy), check=False)
    assert proc.returncode == 2
    assert f"{path}: 100 bytes, expected 30,730,000" in proc.stderr


def test_cli_synth_output_passes_cli_verify(tmp_path):
    synth = run_sknet("data", "synth", "--out", str(tmp_path), "--seed", "5")
    assert '"synthetic": true' in synth.stdout
    verify = run_sknet("data", "verify", str(tmp_path / LAYOUT_DIR))
    assert '"train_records": 50000' in verify.stdout
    assert (tmp_path / LAYOUT_DIR / SYNTHETIC_MARKER).exists()
    assert not list(tmp_path.glob(".*partial*"))


class TestPipeline:
    def test_training_batches_are_normalized_chw_float32_with_int32_labels(self, synthetic_data):
        from sknet.data.pipeline import build_dataset
        from sknet.training.runtime import configure

        configure("CPU", seed=1)
        dataset = build_dataset(synthetic_data, train=True, batch_size=16, num_samples=40)
        assert dataset.get_dataset_size() == 2  # 40 samples, remainder dropped
        images, labels = next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
        assert images.shape == (16, 3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int32
        assert -3 < images.mean() < 3 and images.std() > 0.3

    def test_imagenet_stem_input_is_resized_to_224(self, synthetic_data):
        from sknet.data.pipeline import build_dataset

        dataset = build_dataset(synthetic_data, train=False, batch_size=4, num_samples=4, image_size=224)
        images, _ = next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
        assert images.shape == (4, 3, 224, 224)

    def test_shards_are_disjoint_halves(self, synthetic_data):
        from sknet.data.pipeline import build_dataset

        def labels(shard):
            dataset = build_dataset(synthetic_data, train=False, batch_size=50, num_samples=200,
                                    num_shards=2, shard_id=shard, shuffle=False)
            return [b[1] for b in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]

        first, second = np.concatenate(labels(0)), np.concatenate(labels(1))
        assert len(first) == len(second) == 100
        reference = read_labels(synthetic_data / LAYOUT_DIR / TEST_FILE)[:200]
        assert np.array_equal(first, reference[0::2]) and np.array_equal(second, reference[1::2])
