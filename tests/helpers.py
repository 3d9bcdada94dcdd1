"""Helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from conftest import run_sknet


def train(data, out, short: list[str], *extra: str, check: bool = True):
    """`sknet train` of cpu-smoke on `data` into `out`, shortened by `short` (and `extra` overrides)."""
    return run_sknet("train", "--config", "cpu-smoke", "--set", f"data.uri={data}", f"train.output_dir={out}",
                     *short, *extra, check=check)


def latest(store, model: str = "sknet50") -> dict:
    """The LATEST pointer of `model`, as stored."""
    return json.loads(store.get_bytes(f"releases/{model}/LATEST"))


def release_files(tmp_path: Path, name: str, accuracy: float, **facts) -> tuple[dict, dict]:
    """(files, metadata) of a stand-in release `name`: a 1,200-byte model.mindir and its top-1 `accuracy`."""
    model = tmp_path / name / "model.mindir"
    model.parent.mkdir()
    model.write_bytes(f"mindir of {name}".encode() * 100)
    return {"model.mindir": model}, {"metrics": {"top_1_accuracy": accuracy}, **facts}


def make_tarball(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A tar.gz of `(name, data)` members; an int `data` is that many zero bytes (compressing to almost nothing)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members:
            data = bytes(data) if isinstance(data, int) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path
