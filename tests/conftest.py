"""Shared fixtures: a synthetic CIFAR-10 layout, a trained smoke run, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sknet.data import write_synthetic_layout

CLI_TIMEOUT = 900


def run_sknet(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `sknet` command in a fresh process (MindSpore state does not leak between runs)."""
    env = {**os.environ, "GLOG_v": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "sknet", *args], capture_output=True, text=True, env=env,
        timeout=CLI_TIMEOUT, cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"sknet {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def run_json(*args: str) -> dict:
    return json.loads(run_sknet(*args).stdout)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A full-size synthetic layout shared by the session; tests must not modify it."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_layout(root, seed=0)
    return root


@pytest.fixture(scope="session")
def smoke_run(synthetic_data, tmp_path_factory) -> dict:
    """`sknet train --config cpu-smoke` on synthetic data, as a user would run it."""
    out = tmp_path_factory.mktemp("smoke-run")
    result = run_json("-q", "train", "--config", "cpu-smoke",
                      "--set", f"data.uri={synthetic_data}", f"train.output_dir={out}")
    return result
