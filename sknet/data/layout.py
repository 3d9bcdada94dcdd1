"""The CIFAR-10 binary layout and its verification.

Facts from the dataset's page (https://www.cs.toronto.edu/~kriz/cifar.html): each `.bin` file holds
10,000 records of 1 label byte followed by 3,072 pixel bytes (1024 R, 1024 G, 1024 B, row-major 32×32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sknet.errors import DataError
from sknet.storage import file_uri_path, is_file_uri, is_object_store_uri

LAYOUT_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
META_FILE = "batches.meta.txt"
SYNTHETIC_MARKER = "SYNTHETIC.json"  # written by `sknet data synth`, never by real data
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
RECORDS_PER_FILE = 10_000
FILE_BYTES = RECORDS_PER_FILE * RECORD_BYTES  # 30,730,000
TRAIN_RECORDS = len(TRAIN_FILES) * RECORDS_PER_FILE  # 50,000: every CIFAR-10 layout (`verify_layout` checks it)
NUM_CLASSES = 10
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TARBALL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
TARBALL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # cifar-10-binary.tar.gz
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel, images scaled to [0, 1] (the zoo's values)
STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class LayoutReport:
    path: Path  # the cifar-10-batches-bin directory
    train_records: int
    test_records: int
    synthetic: bool

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "train_records": self.train_records,
            "test_records": self.test_records, "synthetic": self.synthetic,
        }


def layout_dir(root: str | Path) -> Path:
    """The directory holding the .bin files: `root` itself or its `cifar-10-batches-bin` child."""
    root = Path(root)
    nested = root / LAYOUT_DIR
    return nested if nested.is_dir() else root


def verify_layout(root: str | Path) -> LayoutReport:
    """Check file set, exact sizes and label range; raise `DataError` naming the first bad file."""
    directory = layout_dir(root)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory; expected the CIFAR-10 binary layout ({LAYOUT_DIR}/)")
    expected = (*TRAIN_FILES, TEST_FILE, META_FILE)
    missing = [name for name in expected if not (directory / name).is_file()]
    if missing:
        raise DataError(f"{directory}: missing {', '.join(missing)}; expected {', '.join(expected)}")
    for name in (*TRAIN_FILES, TEST_FILE):
        check_batch_file(directory / name)
    return LayoutReport(
        path=directory,
        train_records=len(TRAIN_FILES) * RECORDS_PER_FILE,
        test_records=RECORDS_PER_FILE,
        synthetic=(directory / SYNTHETIC_MARKER).exists(),
    )


def check_batch_file(path: Path) -> None:
    """One .bin file: exactly FILE_BYTES long, every label byte in 0..9."""
    size = path.stat().st_size
    if size != FILE_BYTES:
        raise DataError(
            f"{path}: {size:,} bytes, expected {FILE_BYTES:,} "
            f"({RECORDS_PER_FILE:,} records × {RECORD_BYTES} bytes); the file is truncated or not CIFAR-10"
        )
    labels = read_labels(path)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(
            f"{path}: record {int(bad[0])} has label {int(labels[bad[0]])}, expected 0..{NUM_CLASSES - 1} "
            f"({bad.size} bad records in the file)"
        )


def read_labels(path: Path) -> np.ndarray:
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 0]


def is_synthetic(root: str | Path) -> bool:
    return (layout_dir(root) / SYNTHETIC_MARKER).exists()



def local_dataset_path(uri: str) -> Path:
    """The local directory behind `data.uri` (a path or file:// URI); remote URIs must be fetched first."""
    if not uri:
        raise DataError(
            "data.uri is not set: point it at a CIFAR-10 binary layout directory "
            "(for a synthetic demo copy: sknet data synth --out work/data)"
        )
    if is_file_uri(uri):
        return Path(file_uri_path(uri))
    if is_object_store_uri(uri):
        raise DataError(f"data.uri={uri!r} is remote: fetch it to a local directory first")
    return Path(uri)
