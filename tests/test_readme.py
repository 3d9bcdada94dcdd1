"""The README's quick start, run as written in a temporary copy of the repository (so it cannot drift).
The README's nightly-deployment commands are run the same way in test_e2e.py, against the suite's servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import copy_of_repo, readme_commands, run_shell

REPO = Path(__file__).resolve().parent.parent


def test_the_quick_start_is_two_commands_and_ci_runs_the_test_one():
    assert readme_commands("Quick start") == ["make run", "make test"]
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), flags=re.M)


@pytest.mark.slow
def test_make_run_ships_a_model_on_the_embedded_default(tmp_path):
    clone = copy_of_repo(tmp_path / "sknet-pipeline")
    (command,) = [c for c in readme_commands("Quick start") if c.startswith("make run")]
    proc = run_shell(command, clone)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "no real CIFAR-10 is staged" in output and "Prefect API: a temporary local server" in output
    assert "sknet-train completed on SYNTHETIC data" in proc.stdout
    mindir = Path(re.search(r"MINDIR\s+(\S+)", proc.stdout).group(1))
    lineage = Path(re.search(r"lineage\s+(\S+)", proc.stdout).group(1))
    curve = Path(re.search(r"curve\s+(\S+)", proc.stdout).group(1))
    assert mindir.is_file() and lineage.is_file() and curve.read_bytes()[:4] == b"\x89PNG"
    assert mindir.is_relative_to(clone / "work" / "store" / "releases" / "sknet-tiny")
    assert (clone / "work" / "store" / "releases" / "sknet-tiny" / "LATEST").is_file()
    run_id = mindir.parent.name
    checkpoints = clone / "work" / "store" / "runs" / run_id / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*.ckpt"))[-1] == "step-00000060.ckpt"  # mirrored
    stages = re.search(r"seconds\s+(.+)", proc.stdout).group(1)
    assert all(name in stages for name in ("stage dataset", "data", "train", "evaluate", "export", "release"))
    assert Path(re.search(r"card\s+(\S+)", proc.stdout).group(1)).read_text().startswith("# Model card: sknet-tiny")

    again = run_shell(command, clone)  # same data, settings and code: nothing to train
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"unchanged since release {run_id}" in again.stdout and "RUN_ARGS=--force" in again.stdout
    releases = clone / "work" / "store" / "releases" / "sknet-tiny"
    assert {p.name for p in releases.iterdir() if not p.name.startswith(".")} == {"LATEST", run_id}


def test_the_architecture_map_names_every_module():
    """Issue #28: the README's Architecture is the map of the tree; a module it does not name is one a newcomer
    cannot find."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Architecture")
    architecture = readme[start:readme.index("\n## ", start + 5)]
    unnamed = [str(path.relative_to(REPO)) for folder in ("sknet", "flows", "tasks", "infra")
               for path in sorted((REPO / folder).rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py") and path.name not in architecture]
    assert unnamed == []
