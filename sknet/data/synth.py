"""A deterministic, full-size synthetic copy of the CIFAR-10 binary layout, for tests and demos.

Each class is one of five colours crossed with one of two stripe orientations, with random phase,
contrast, brightness and pixel noise per image: a small conv net must look at colour *and* structure,
and can pass an accuracy gate. The copy carries a `SYNTHETIC.json` marker so nothing mistakes it for
real data.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from sknet.data.layout import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    LAYOUT_DIR,
    META_FILE,
    NUM_CLASSES,
    RECORD_BYTES,
    RECORDS_PER_FILE,
    SYNTHETIC_MARKER,
    TEST_FILE,
    TRAIN_FILES,
)
from sknet.errors import DataError

_PALETTE = np.array(
    [[220, 60, 60], [60, 200, 60], [60, 90, 230], [230, 210, 50], [180, 70, 220]], dtype=np.float32
)
_STRIPE_CYCLES = 3  # stripes per 32 pixels
_NOISE_SIGMA = 40.0


def synthetic_records(seed: int, file_index: int, count: int = RECORDS_PER_FILE) -> np.ndarray:
    """`count` records (label byte + CHW pixels) as a (count, 3073) uint8 array; balanced classes."""
    rng = np.random.default_rng([seed, file_index])
    labels = rng.permutation(np.arange(count) % NUM_CLASSES)
    colours = _PALETTE[labels % len(_PALETTE)] * rng.uniform(0.7, 1.1, size=(count, 1))
    vertical = labels >= len(_PALETTE)
    phase = rng.uniform(0, 2 * np.pi, size=(count, 1))
    contrast = rng.uniform(25, 60, size=(count, 1))
    wave = contrast * np.sin(2 * np.pi * _STRIPE_CYCLES * np.arange(32) / 32 + phase)  # (count, 32)
    pattern = np.where(vertical[:, None, None], wave[:, None, :], wave[:, :, None])  # (count, 32, 32)
    images = colours[:, :, None, None] + pattern[:, None, :, :]
    images += rng.normal(0, _NOISE_SIGMA, size=(count, *IMAGE_SHAPE))
    records = np.empty((count, RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = np.clip(images, 0, 255).reshape(count, -1)
    return records


def write_synthetic_layout(out: str | Path, seed: int = 0, overwrite: bool = False) -> Path:
    """Write `<out>/cifar-10-batches-bin/` (≈184 MB); returns that directory.

    The files go to a temporary sibling first and appear under their final name only when complete.
    """
    target = Path(out) / LAYOUT_DIR
    if target.exists() and not overwrite:
        raise DataError(f"{target} already exists; remove it or pass --force to overwrite")
    staging = Path(out) / f".{LAYOUT_DIR}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for index, name in enumerate((*TRAIN_FILES, TEST_FILE)):
            synthetic_records(seed, index).tofile(staging / name)
        (staging / META_FILE).write_text("\n".join(CLASS_NAMES) + "\n\n")
        marker = {"generator": "sknet data synth", "seed": seed, "note": "synthetic data, not CIFAR-10"}
        (staging / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
