"""End to end, the way users run it: moto's S3 server, then the README's nightly-deployment commands as
written (`make up`: `prefect server start` on a free loopback port, the process work pool, `prefect deploy`
from deployments/prefect.yaml, a worker; `prefect deployment run sknet-train/nightly --param
config=cpu-smoke --watch`; `make down`) in a temporary copy of the repository, with the deployments pointed
at the bucket through the environment. Everything asserted is read back through the Prefect REST API and
the bucket.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import call_api, copy_of_repo, readme_commands, run_shell, run_sknet

pytestmark = pytest.mark.slow

SMOKE = {"data.num_train_samples": 320, "data.num_eval_samples": 320, "train.epochs": 2,
         "train.checkpoint_every_steps": 5, "train.log_every_steps": 1}
README_SECTION = "The nightly deployment on your machine"


class WebhookReceiver:
    """A webhook on 127.0.0.1 that keeps every JSON body POSTed to it (what Slack or Teams would receive) and
    answers `status`; `path` is the secret part of its URL."""

    def __init__(self, status: int = 200, path: str = "/hooks/sknet"):
        import http.server
        import threading

        received = self.posts = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def about(self, text: str) -> list[dict]:
        return [post for post in self.posts if text in post["text"]]


@pytest.fixture(scope="module")
def webhook():
    receiver = WebhookReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture(scope="module")
def site(s3_server, synthetic_data, tmp_path_factory, webhook):
    """A bucket with the synthetic dataset staged; the README's `make up` run against it in a repo copy."""
    from infra.stack import Stack
    from sknet.ports import free_port
    from sknet.storage import s3_client

    bucket = "sknet-e2e"
    s3_client(endpoint_url=s3_server.endpoint).create_bucket(Bucket=bucket)
    staged = json.loads(run_sknet("data", "stage", "--source", str(synthetic_data), "--dest",
                                  f"s3://{bucket}/datasets/cifar10", "--endpoint-url",
                                  s3_server.endpoint).stdout)["uri"]
    clone = copy_of_repo(tmp_path_factory.mktemp("clone") / "sknet-pipeline")
    port = free_port()
    env = {"SKNET_PREFECT_PORT": str(port), "SKNET_PUBLISH_TO": f"s3://{bucket}", "SKNET_DATASET_URI": staged,
           "AWS_ENDPOINT_URL": s3_server.endpoint, "SKNET_NOTIFY_URL": webhook.url}
    commands = readme_commands(README_SECTION)
    assert commands[0] == "make up" and commands[-1] == "make down"
    try:
        up = run_shell(commands[0], clone, env, timeout=600)
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        assert f"Prefect UI: http://127.0.0.1:{port}" in up.stdout
        assert "failure notifications: webhook (SKNET_NOTIFY_URL)" in up.stdout
        yield {"stack": Stack(clone / "work" / "prefect", port), "bucket": bucket, "dataset": staged,
               "endpoint": s3_server.endpoint, "clone": clone, "env": env, "port": port,
               "work": tmp_path_factory.mktemp("work")}
    finally:
        run_shell(commands[-1], clone, env)


class CommandLines:
    """Every process command line seen on this machine while it runs (sampled every 0.2 s)."""

    def __init__(self):
        import threading

        self.seen: set[str] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self.done.wait(0.2):
            for process in psutil.process_iter(["cmdline"]):
                self.seen.add(" ".join(process.info["cmdline"] or []))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


@pytest.fixture(scope="module")
def nightly_run(site) -> dict:
    """The README's `prefect deployment run sknet-train/nightly --param config=cpu-smoke --watch`, as written."""
    commands = readme_commands(README_SECTION)[1:-1]
    script = "\n".join(commands).replace("4200", str(site["port"]))
    with CommandLines() as command_lines:
        proc = run_shell(script, site["clone"], site["env"], timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout).group(1)
    return {**flow_run(site, run_id), "output": proc.stdout, "command_lines": command_lines.seen}


def api(site, path: str, body: dict | None = None, method: str | None = None):
    return call_api(site["stack"].api_url, path, body, method=method)


def run_deployment(site, *params: str, watch: bool = True) -> str:
    """`prefect deployment run sknet-train/smoke`; returns the flow run id."""
    args = ["deployment", "run", "sknet-train/smoke", "--param", f"overrides={json.dumps(SMOKE)}",
            "--param", f"work_dir={site['work']}", *params]
    proc = site["stack"].prefect(*args, *(["--watch", "--watch-timeout", "900"] if watch else []), timeout=960,
                                 check=False)
    return re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout).group(1)


def flow_run(site, run_id: str) -> dict:
    return api(site, f"flow_runs/{run_id}")


def wait_final(site, run_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while (run := flow_run(site, run_id))["state"]["type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"flow run {run_id} still {run['state']['type']}"
        time.sleep(2)
    return run


def s3_store(site, prefix: str = ""):
    from sknet.storage import S3Store

    return S3Store(f"s3://{site['bucket']}/{prefix}".rstrip("/"), endpoint_url=site["endpoint"])


def task_runs(site, run_id: str) -> list[dict]:
    return api(site, "task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})


def test_the_readme_nightly_run_completes(nightly_run):
    assert nightly_run["state"]["type"] == "COMPLETED", nightly_run["state"]
    assert "Completed" in nightly_run["output"]
    assert nightly_run["parameters"]["config"] == "cpu-smoke"


def test_the_release_holds_verified_objects_and_lineage(site, nightly_run, tmp_path):
    from sknet.storage import sha256_file
    from sknet.training.checkpoint import CheckpointMirror

    run_id = nightly_run["id"]
    releases = s3_store(site, "releases/sknet-tiny")
    assert json.loads(releases.get_bytes("LATEST"))["version"] == run_id
    manifest = json.loads(releases.get_bytes(f"{run_id}/manifest.json"))
    assert {"model.mindir", "checkpoint.ckpt", "config.yaml", "lineage.json", "MODEL_CARD.md"} <= set(manifest["files"])
    card = releases.get_bytes(f"{run_id}/MODEL_CARD.md").decode()
    assert "SYNTHETIC" in card and site["dataset"] in card and "first release" in card
    lineage = json.loads(releases.get_bytes(f"{run_id}/lineage.json"))
    for name in ("model.mindir", "checkpoint.ckpt"):
        releases.get(f"{run_id}/{name}", tmp_path / name)
        assert lineage["artifacts"][name]["sha256"] == manifest["files"][name]["sha256"] == sha256_file(tmp_path / name)
    assert lineage["dataset"]["uri"] == site["dataset"] and lineage["dataset"]["synthetic"] is True
    assert lineage["dataset"]["digest"] == site["dataset"].rsplit("/", 1)[-1]
    assert CheckpointMirror(s3_store(site, f"runs/{run_id}/checkpoints")).steps()[-1] == 60
    assert s3_store(site, f"runs/{run_id}").exists("curve.png")


def test_the_secret_key_shows_up_nowhere(site, nightly_run, tmp_path):
    """The S3 secret (a canary) is in the worker's environment only: not in any log line, artifact, flow or task
    run, event, deployment or block the API serves, any object in the bucket, any file the run left locally,
    or any process command line seen during the run."""
    from s3server import SECRET_KEY

    run_id = nightly_run["id"]
    served = [api(site, "logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200, "offset": offset})
              for offset in range(0, 2000, 200)]
    served += [api(site, "artifacts/filter", {}), api(site, f"flow_runs/{run_id}"), task_runs(site, run_id),
               api(site, "deployments/filter", {}), api(site, "block_documents/filter", {"include_secrets": False}),
               api(site, "events/filter", {"filter": {"occurred": {"since": "2020-01-01T00:00:00Z"}}, "limit": 50})]
    assert sum(len(page) for page in served[:10]) > 20  # the logs were really read
    assert SECRET_KEY not in json.dumps(served)
    bucket = s3_store(site)
    for obj in bucket.list():
        bucket.get(obj.key, tmp_path / "object")
        assert SECRET_KEY.encode() not in (tmp_path / "object").read_bytes(), obj.key
    for root in (Path(site["work"]), Path(site["clone"], "work")):
        for path in root.rglob("*"):
            if path.is_file() and path.suffix not in (".bin", ".ckpt", ".mindir", ".db", ".png"):
                assert SECRET_KEY.encode() not in path.read_bytes(), path
    assert len(nightly_run["command_lines"]) > 10
    assert not [line for line in nightly_run["command_lines"] if SECRET_KEY in line]


def test_the_ui_has_the_artifacts_and_asset_lineage(site, nightly_run):
    run_id = nightly_run["id"]
    artifacts = {a["key"]: a for a in api(site, "artifacts/filter", {"flow_runs": {"id": {"any_": [run_id]}}})}
    assert {"sknet-run-summary", "sknet-metrics", "sknet-epochs", "sknet-training-progress", "sknet-curve",
            "sknet-release-model", "sknet-release-lineage", "sknet-release-manifest",
            "sknet-model-card"} <= set(artifacts)
    assert "PASS" in artifacts["sknet-run-summary"]["data"] and "SYNTHETIC" in artifacts["sknet-run-summary"]["data"]
    assert float(artifacts["sknet-training-progress"]["data"]) == 100
    assert [row["epoch"] for row in json.loads(artifacts["sknet-epochs"]["data"])] == [1, 2, 3]
    assert f"s3://{site['bucket']}/runs/{run_id}/curve.png" in artifacts["sknet-curve"]["data"]
    checkpoints = f"s3://{site['bucket']}/runs/{run_id}/checkpoints"
    mindir = f"s3://{site['bucket']}/releases/sknet-tiny/{run_id}/model.mindir"
    deadline = time.monotonic() + 60  # events reach the server asynchronously, after the run's final state
    while True:
        events = api(site, "events/filter", {"filter": {"event": {"prefix": ["prefect.asset.materialization"]},
                                                        "related": {"id": [f"prefect.flow-run.{run_id}"]}},
                                             "limit": 50})["events"]
        by_key = {e["resource"]["prefect.resource.id"]: e for e in events}
        if set(by_key) == {checkpoints, mindir} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(by_key) == {checkpoints, mindir}
    assert all(e["event"] == "prefect.asset.materialization.succeeded" for e in events)
    upstream = {key: {r["prefect.resource.id"] for r in e["related"] if r.get("prefect.resource.role") == "asset"}
                for key, e in by_key.items()}
    assert site["dataset"] in upstream[checkpoints] and checkpoints in upstream[mindir]
    assert by_key[mindir]["payload"]["top_1_accuracy"] > 0.3
    assert len(by_key[checkpoints]["payload"]["sha256"]) == 64


@pytest.fixture(scope="module")
def failing_run(site, nightly_run) -> dict:
    """A smoke run with an unreachable threshold whose training rank is SIGKILLed after its first checkpoint."""
    run_id = run_deployment(site, "--param", "gate_threshold=0.999", watch=False)
    checkpoints = Path(site["work"], "runs", run_id, "checkpoints")
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("step-*.ckpt")):
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.5)
    rank = next(pid for pid in _pids_with(f"runs/{run_id}/config.yaml") if _is_rank(pid))
    os.kill(rank, signal.SIGKILL)
    return wait_final(site, run_id)


def test_a_killed_rank_is_retried_and_the_retry_resumes_from_its_checkpoint(site, failing_run):
    run_id = failing_run["id"]
    train = next(t for t in task_runs(site, run_id) if t["name"].startswith("train "))
    assert train["state"]["type"] == "COMPLETED" and train["run_count"] == 2
    result = json.loads(Path(site["work"], "runs", run_id, "result.json").read_text())
    assert result["complete"] is True and result["resumed_from_step"] >= 5
    logs = api(site, "logs/filter", {"logs": {"task_run_id": {"any_": [train["id"]]}}, "limit": 200})
    assert any("exited with code -9" in log["message"] for log in logs)  # the first attempt's failure


def test_a_gate_miss_fails_the_run_and_moves_no_release_pointer(site, nightly_run, failing_run):
    run_id = failing_run["id"]
    assert failing_run["state"]["type"] == "FAILED"
    message = failing_run["state"]["message"]
    assert "gate failed: top_1_accuracy" in message and "< threshold 0.9990" in message
    assert json.loads(s3_store(site, "releases/sknet-tiny").get_bytes("LATEST"))["version"] == nightly_run["id"]
    assert not s3_store(site, f"releases/sknet-tiny/{run_id}").list()
    assert s3_store(site, f"runs/{run_id}").exists("eval.json")  # kept for diagnosis


def test_a_failed_run_is_notified_once_through_the_webhook_and_a_passing_run_never(site, nightly_run, failing_run,
                                                                                    webhook):
    """The automation `make up` applied from deployments/notify-on-failure.yaml, with SKNET_NOTIFY_URL set."""
    deadline = time.monotonic() + 120  # automations act on the event stream, seconds after the state change
    while not webhook.about(failing_run["name"]):
        assert time.monotonic() < deadline, f"no notification for {failing_run['name']}; got {webhook.posts}"
        time.sleep(1)
    time.sleep(10)  # a duplicate would arrive within this
    [post] = webhook.about(failing_run["name"])
    assert f"sknet-train {failing_run['name']}: Failed" in post["text"]
    assert "gate failed: top_1_accuracy" in post["text"] and "&lt; threshold 0.9990" in post["text"]  # Slack: `<`
    assert f"http://127.0.0.1:{site['port']}/runs/flow-run/{failing_run['id']}" in post["text"]
    assert not webhook.about(nightly_run["name"]) and len(webhook.posts) == 1, webhook.posts


def test_a_flow_run_retry_skips_finished_stages_here_and_resumes_from_the_bucket_elsewhere(site, failing_run):
    run_id = failing_run["id"]
    # `prefect flow-run retry` on the same worker: the finished stages are not run again
    retry(site, run_id)
    states = {t["name"].split()[0]: t["state"]["name"] for t in task_runs(site, run_id)
              if t["start_time"] and t["start_time"] > failing_run["end_time"]}
    assert {states[name] for name in ("fetch", "train", "evaluate", "publish")} == {"Cached"}, states

    # …and on another machine (no run directory, no Prefect result storage): training resumes from the
    # checkpoint mirrored in the bucket, which is already the last step, so no step is trained again
    shutil.rmtree(Path(site["work"], "runs", run_id))
    shutil.rmtree(site["stack"].home / "storage")
    retry(site, run_id)
    result = json.loads(Path(site["work"], "runs", run_id, "result.json").read_text())
    assert result["resumed_from_step"] == result["steps"] == 20 and result["complete"] is True


def retry(site, run_id: str) -> dict:
    site["stack"].prefect("flow-run", "retry", run_id)
    run = wait_final(site, run_id)
    assert run["state"]["type"] == "FAILED" and "gate failed" in run["state"]["message"]
    return run


def _pids_with(needle: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _is_rank(pid: int) -> bool:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return any(entry.startswith(b"RANK_ID=") for entry in environ) and b"MS_ROLE=MS_SCHED" not in environ


def test_a_newly_staged_dataset_starts_a_training_run_on_it_and_restaging_starts_nothing(site, tmp_path):
    """`make stage` runs sknet-stage/manual; its `sknet.dataset.staged` event triggers sknet-train (the smoke
    deployment: `make up` pauses nightly's trigger on a machine without NPUs) on exactly the new URI. The smoke
    deployment's own parameters are set as an operator would (the short SMOKE training, any accuracy passes):
    the triggered run keeps them and takes only the dataset from the event."""
    from sknet.data.manifest import dataset_manifest

    smoke = api(site, "deployments/name/sknet-train/smoke")
    api(site, f"deployments/{smoke['id']}", {"parameters": {**smoke["parameters"], "overrides": SMOKE,
                                                            "gate_threshold": 0.0}}, method="PATCH")
    run_sknet("data", "synth", "--seed", "7", "--out", str(tmp_path / "seed7"))
    layout = tmp_path / "seed7" / "cifar-10-batches-bin"
    uri = f"s3://{site['bucket']}/datasets/cifar10/{dataset_manifest(layout)['digest']}"
    staged = run_shell(f"make stage SOURCE={tmp_path / 'seed7'}", site["clone"], site["env"], timeout=600)
    assert staged.returncode == 0 and "Completed" in staged.stdout, (staged.stdout + staged.stderr)[-3000:]
    assert s3_store(site, f"datasets/cifar10/{uri.rsplit('/', 1)[-1]}").exists("manifest.json")

    deadline = time.monotonic() + 180
    while not (runs := training_runs_on(site, uri)):
        assert time.monotonic() < deadline, "no sknet-train run on the new dataset within 3 minutes"
        time.sleep(2)
    [run] = runs
    assert run["created_by"]["display_value"] == "sknet-train/smoke on a new dataset"
    assert run["parameters"]["config"] == "cpu-smoke" and run["parameters"]["overrides"] == SMOKE
    final = wait_final(site, run["id"])
    assert final["state"]["type"] == "COMPLETED", final["state"]

    again = run_shell(f"make stage SOURCE={tmp_path / 'seed7'}", site["clone"], site["env"], timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    # the stage flow delivers its event before it completes: had re-staging announced anything, it would be here
    assert len(staged_events(site, uri)) == 1
    assert len(training_runs_on(site, uri)) == 1


def staged_events(site, resource: str) -> list[dict]:
    return api(site, "events/filter", {"filter": {"event": {"name": ["sknet.dataset.staged"]},
                                                  "resource": {"id": [resource]}}})["events"]


def training_runs_on(site, dataset_uri: str) -> list[dict]:
    runs = api(site, "flow_runs/filter", {"flows": {"name": {"any_": ["sknet-train"]}}})
    return [run for run in runs if run["parameters"].get("dataset_uri") == dataset_uri]


def test_a_dataset_outside_the_store_starts_nothing_and_a_run_on_it_fails_before_training(site, synthetic_data):
    """Issue 18 §4: a real dataset staged beside the store's `datasets/` (`datasets-evil/`: a string prefix of it,
    not a path prefix), announced by hand, starts no run; run on it by hand, the flow fails in its first task."""
    foreign = json.loads(run_sknet("data", "stage", "--source", str(synthetic_data), "--dest",
                                   f"s3://{site['bucket']}/datasets-evil/cifar10", "--endpoint-url",
                                   site["endpoint"]).stdout)["uri"]
    site["stack"].prefect("event", "emit", "sknet.dataset.staged", "--resource-id", foreign)
    # a control event after it, for a (missing) dataset of the store's own: the trigger handles events in order,
    # so once the control has started its run, the foreign event would have started one too
    control = f"s3://{site['bucket']}/datasets/cifar10/{'0' * 64}"
    site["stack"].prefect("event", "emit", "sknet.dataset.staged", "--resource-id", control)
    deadline = time.monotonic() + 180
    while not training_runs_on(site, control):
        assert time.monotonic() < deadline, "the control event started no run within 3 minutes"
        time.sleep(1)
    while not staged_events(site, foreign):  # the event store saves events apart from the triggers, in batches
        assert time.monotonic() < deadline, "the hand-emitted event never reached the server's event store"
        time.sleep(1)
    assert not training_runs_on(site, foreign)
    assert wait_final(site, training_runs_on(site, control)[0]["id"])["state"]["type"] == "FAILED"  # no such data

    run = wait_final(site, run_deployment(site, "--param", f"dataset_uri={foreign}"))
    assert run["state"]["type"] == "FAILED"
    assert foreign in run["state"]["message"] and f"['s3://{site['bucket']}/datasets/']" in run["state"]["message"]
    assert [(t["name"].split()[0], t["run_count"]) for t in task_runs(site, run["id"])] in ([], [("fetch", 1)])
