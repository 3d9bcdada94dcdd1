"""A run's plan: its id, where it works locally, and where its outputs go in object storage.

One flow run (or one multi-node job) is one plan: the run id names the local run directory, the
checkpoint mirror `<store>/runs/<id>/checkpoints` and the release version `<store>/releases/<model>/<id>`,
so the run id (and the model's name) must be one path segment (`sknet.release.check_segment`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sknet.config import Config, load_config
from sknet.data.source import check_dataset_allowed
from sknet.release import check_segment, release_prefix, run_prefix
from sknet.run_files import MODEL_FILE
from sknet.storage import store_from_config


def release_name(model_name: str) -> str:
    """The model's name under `releases/`: the config's `model.name` with `_` → `-` (sknet_tiny → sknet-tiny)."""
    return model_name.replace("_", "-")


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    output_dir: str  # the local run directory (`train.output_dir`)
    cache_dir: str  # the local dataset cache, keyed by digest
    store_uri: str  # where runs/ and releases/ are published
    model: str  # the release name of the model
    flow_run_id: str | None = None  # the flow run executing the plan, if any: the holder of its release's claim

    @property
    def model_path(self) -> str:
        return str(Path(self.output_dir, MODEL_FILE))

    @property
    def run_uri(self) -> str:
        return f"{self.store_uri}/{run_prefix(self.run_id)}"

    @property
    def checkpoint_mirror(self) -> str:
        return f"{self.run_uri}/checkpoints"

    @property
    def release_uri(self) -> str:
        return f"{self.store_uri}/{release_prefix(self.model, self.run_id)}"


def plan_run(config: str | Path, overrides: Mapping[str, Any] | None, *, run_id: str | None, work_dir: str | Path,
             dataset_uri: str | None = None, gate_threshold: float | None = None,
             publish_to: str | None = None, flow_run_id: str | None = None) -> tuple[Config, RunPlan]:
    """The validated config of run `run_id` (flow parameters win over `overrides`) and its plan.

    `run_id` defaults to `flow_run_id` (the flow run executing the plan; "local" without one), which holds the
    release's claim: a retry of the same flow run takes it over at once. Raises `ConfigError` before anything is
    written when a parameter or override is invalid; `run_id` and the model's release name must each be one
    path segment.
    """
    run_id = check_segment("run_id", run_id or flow_run_id or "local")
    work = Path(work_dir).resolve()
    output_dir = str(work / "runs" / run_id)
    extra: dict[str, Any] = {"train.output_dir": output_dir}
    extra |= {"data.uri": dataset_uri} if dataset_uri else {}
    extra |= {"gate.threshold": gate_threshold} if gate_threshold is not None else {}
    extra |= {"storage.uri": publish_to} if publish_to else {}
    cfg = load_config(config, {**(overrides or {}), **extra})
    if cfg.data.uri:  # a dataset outside data.allowed_prefixes: refused before any task (preflight included)
        check_dataset_allowed(cfg)
    plan = RunPlan(run_id=run_id, output_dir=output_dir, cache_dir=str(work / "cache"),
                   store_uri=store_from_config(cfg.storage).uri,
                   model=check_segment("model.name", release_name(cfg.model.name)), flow_run_id=flow_run_id)
    return cfg.override({"train.checkpoint_mirror": plan.checkpoint_mirror}), plan
