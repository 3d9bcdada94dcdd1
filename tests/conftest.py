"""Shared fixtures: a synthetic CIFAR-10 layout, a trained smoke run, a compile cache shared by the session's
trainings, and a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sknet.data import write_synthetic_layout
from sknet.training.compile_cache import SHARED_CACHE_ENV

CLI_TIMEOUT = 900


def sknet_main(capsys, *args: str) -> tuple[int, str, str]:
    """`sknet ARGS` in this process (exit code, stdout, stderr): for commands that load no MindSpore state, ≈ 1.5 s
    cheaper than `run_sknet`'s fresh interpreter."""
    from sknet.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


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


def made_once(tmp_path_factory, name: str, make) -> Path:
    """`<shared>/<name>`, made by `make(path)` in the first pytest worker that asks for it and reused by the
    others (pytest-xdist workers share the parent of their base temp directories; without xdist it is the
    session's own). A partial result of a worker that failed is made again."""
    from sknet.storage.locks import exclusive_lock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    target, done = shared / name, shared / f"{name}.done"
    with exclusive_lock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            make(target)
            done.touch()
    return target


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory) -> Path:
    """Every training process of the session (all workers, and what they start) shares its compiled graphs
    through SKNET_COMPILE_CACHE_DIR, as the processes of one host do in production: a run whose graph another
    run compiled loads it (≈ 4 s and half the CPU of a short CPU training)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "compile-cache"
    os.environ[SHARED_CACHE_ENV] = str(shared)
    return shared


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """A full-size synthetic layout shared by the whole session (all workers); tests must not modify it."""
    return made_once(tmp_path_factory, "synthetic", lambda root: write_synthetic_layout(root, seed=0))


@pytest.fixture(scope="session")
def smoke_run(synthetic_data, tmp_path_factory) -> dict:
    """`sknet train --config cpu-smoke` on synthetic data, as a user would run it (once a session; tests must not
    modify its directory)."""
    def train(out: Path) -> None:
        result = run_json("-q", "train", "--config", "cpu-smoke",
                          "--set", f"data.uri={synthetic_data}", f"train.output_dir={out / 'run'}")
        (out / "result.json").write_text(json.dumps(result))

    return json.loads((made_once(tmp_path_factory, "smoke-run", train) / "result.json").read_text())


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A temporary Prefect API (Prefect's test harness) for the module: flows run in-process against it."""
    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free loopback port, with fake credentials in the environment."""
    from s3server import SECRET_KEY, S3Server

    env = {"AWS_ACCESS_KEY_ID": "sknet-test-key", "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """The same test against a file:// store and an S3 store on moto, under the module's S3_PREFIX."""
    from sknet.storage import LocalStore, S3Store

    if request.param == "file":
        return LocalStore(tmp_path / "bucket")
    server = request.getfixturevalue("s3_server")
    prefix = getattr(request.module, "S3_PREFIX", "")
    return S3Store(f"s3://{request.getfixturevalue('bucket')}/{prefix}".rstrip("/"), endpoint_url=server.endpoint)


@pytest.fixture
def staged(store, synthetic_data):
    """The synthetic layout staged into `store`: (its dataset URI, its digest)."""
    from sknet.data.stage import stage

    uri = stage(str(synthetic_data), store)
    return uri, uri.rsplit("/", 1)[-1]


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket per test: s3://<name>."""
    import re
    import uuid

    from sknet.storage import s3_client

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    s3_client(endpoint_url=s3_server.endpoint).create_bucket(Bucket=name)
    return name


def copy_of_repo(target: Path) -> Path:
    """The working tree's tracked and new files in `target`, with this venv linked in (nothing reinstalled)."""
    repo = Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (repo / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, target / name)
    (target / ".venv").symlink_to(repo / ".venv")
    stamp = (repo / ".venv" / ".installed").stat().st_mtime
    os.utime(target / "pyproject.toml", (stamp - 60, stamp - 60))  # make sees the install as current
    return target


def readme_commands(heading: str) -> list[str]:
    """The commands of the first ```bash block under `## heading` in README.md, without comments."""
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def run_shell(script: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900):
    """`script` in bash -euo pipefail, as a user would type it."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def race(calls):
    """Run `calls` in threads released at the same moment; each one's result or exception."""
    import threading

    start, results = threading.Barrier(len(calls)), [None] * len(calls)

    def run(i):
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test looks at
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def artifact_of(state, key: str) -> str | None:
    """The data of the flow run's artifact `key` (None if it has none)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            key=ArtifactFilterKey(any_=[key])))
    return artifacts[0].data if artifacts else None


RETRIED_STATUSES = {429, 502, 503}  # what Prefect's own client retries (503: its SQLite database was busy)


def call_api(api_url: str, path: str, body: dict | None = None, attempts: int = 6, method: str | None = None):
    """POST `body` (GET without one; or `method`) to the Prefect REST API at `api_url`; the decoded answer. A
    429/502/503 is retried with backoff, as `prefect.client` does: under a loaded suite the server's SQLite
    answers "busy"."""
    import time
    import urllib.error
    import urllib.request

    method = method or ("POST" if body is not None else "GET")
    request = urllib.request.Request(f"{api_url}/{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code not in RETRIED_STATUSES or attempt == attempts - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
