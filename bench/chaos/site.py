"""The chaos bench's site: moto's S3 server behind the fault proxy, the Prefect stack (server, pool,
deployments, worker) and the work dir's tmpfs, set up for the smoke runs and torn down after them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.processes import send_signal

BUCKET = "chaos"
# tests/test_e2e.py's SMOKE with a third epoch: 30 steps, a wider window for faults during training
SMOKE = {"data.num_train_samples": 320, "data.num_eval_samples": 320, "train.epochs": 3,
         "train.checkpoint_every_steps": 5, "train.log_every_steps": 1}
STEPS = 30
QUOTA_MB = 640  # the work dir's tmpfs: dataset cache (≈ 184 MB) + run directories


@dataclass
class Site:
    scratch: Path
    work: Path
    s3: object = None
    proxy: object = None
    stack: object = None
    mounted: bool = False
    deployment_id: str = ""
    parameters: dict = field(default_factory=dict)  # every run's flow parameters
    dataset: str = ""
    direct: object = None  # the bucket without the proxy: the checks' view

    def api(self, path: str, body: dict | None = None, timeout: float = 30):
        request = urllib.request.Request(f"{self.stack.api_url}/{path}", method="POST" if body is not None else "GET",
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if text else None


def set_up(site: Site, seed: int) -> None:
    from infra.faultproxy import FaultProxy
    from infra.s3server import S3Server
    from infra.stack import Stack
    from sknet.data.stage import stage
    from sknet.data.synth import write_synthetic_layout
    from sknet.ports import free_port
    from sknet.storage import S3Store, s3_client

    os.environ.update({"AWS_ACCESS_KEY_ID": "chaos", "AWS_SECRET_ACCESS_KEY": "chaos",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    site.work.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={QUOTA_MB}m", "tmpfs", str(site.work)], check=True,
                   capture_output=True, text=True, timeout=30)
    site.mounted = True
    site.s3 = S3Server(site.scratch / "moto.log")
    s3_client(endpoint_url=site.s3.endpoint).create_bucket(Bucket=BUCKET)
    site.proxy = FaultProxy(site.s3.port, seed=seed)
    site.direct = S3Store(f"s3://{BUCKET}", endpoint_url=site.s3.endpoint)
    data = site.scratch / "synthetic"
    write_synthetic_layout(data, seed=0)
    site.dataset = stage(str(data), S3Store(f"s3://{BUCKET}/datasets/cifar10", endpoint_url=site.s3.endpoint))
    site.stack = Stack(site.scratch / "prefect", free_port())
    deploy_env = {"SKNET_PUBLISH_TO": f"s3://{BUCKET}", "SKNET_DATASET_URI": site.dataset,
                  "SKNET_WORK_DIR": str(site.work)}
    worker_env = {"AWS_ENDPOINT_URL": site.proxy.endpoint}  # every S3 request of the flow goes through the proxy
    site.stack.start_server()
    site.stack.create_pool()
    site.stack.deploy(deploy_env)
    site.stack.pause_schedules("sknet-train/nightly")
    site.stack.start_worker(worker_env)
    deployment = site.api("deployments/name/sknet-train/smoke")
    site.deployment_id = deployment["id"]
    site.parameters = {"overrides": SMOKE, "work_dir": str(site.work)}
    if "force" in (deployment.get("parameter_openapi_schema") or {}).get("properties", {}):
        site.parameters["force"] = True  # train every run, though the settings are those of an earlier release


def tear_down(site: Site, seen: dict[tuple, dict]) -> list[str]:
    """Stop everything started here, each step on its own (one failing does not skip the others)."""
    problems = []
    steps = [
        ("proxy fault rate", lambda: setattr(site.proxy, "rate", 0.0) if site.proxy else None),
        ("leftover run processes", lambda: [send_signal(p, signal.SIGKILL) for p in seen.values()]),
        ("prefect stack", lambda: site.stack.down() if site.stack else None),
        ("proxy", lambda: site.proxy.close() if site.proxy else None),
        ("moto", lambda: site.s3.stop() if site.s3 else None),
        ("tmpfs", lambda: _unmount(site)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 — report and go on with the rest
            problems.append(f"{what}: {exc}")
    return problems


def _unmount(site: Site) -> None:
    if not site.mounted:
        return
    for _ in range(10):
        proc = subprocess.run(["umount", str(site.work)], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            site.mounted = False
            return
        time.sleep(1)
    subprocess.run(["umount", "-l", str(site.work)], check=True, capture_output=True, timeout=30)
    site.mounted = False
