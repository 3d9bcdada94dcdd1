"""A release killed (SIGKILL, for real) at each point of its publication, then retried: on file:// and S3 (moto).

The release runs in a child process that kills itself right before a chosen store call, so nothing of it
cleans up (no `finally`, no claim removed); the retry runs here, as the retried task of the same flow run.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from sknet.release import promote, publish_release
from sknet.storage import WriteConflict, read_manifest

S3_PREFIX = "sknet"
VERSION = "releases/sknet50/v1"
METADATA = {"metrics": {"top_1_accuracy": 0.91}}

CHILD = """
import json, os, signal, sys
from pathlib import Path
from sknet.release import publish_release
from sknet.storage import open_store

uri, endpoint, point, run_dir, holder = sys.argv[1:]
store = open_store(uri, endpoint_url=endpoint or None)
puts = []

def kill_before(method, now):
    real = getattr(store, method)
    def call(*args):
        if now(*args):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    setattr(store, method, call)

def at_put(src, key):  # "claimed": before the first object (the claim is written); "uploading": before the second
    puts.append(key)
    return point == "claimed" or (point == "uploading" and len(puts) == 2)

kill_before("put", at_put)
kill_before("put_bytes_if", lambda data, key, tag: point == "manifest" and key.endswith("/manifest.json"))
kill_before("delete", lambda key: point == "claim-removal" and key.endswith("/.writing"))
files = {p.name: p for p in Path(run_dir).iterdir()}
publish_release(store, "sknet50", "v1", files, json.loads(os.environ["METADATA"]), holder=holder)
"""


@pytest.fixture
def run_files(tmp_path):
    """The release's files, as the flow run hands them to every attempt of the release task."""
    run = tmp_path / "run"
    run.mkdir()
    for name, size in (("model.mindir", 3000), ("checkpoint.ckpt", 5000), ("config.yaml", 40)):
        (run / name).write_bytes(name.encode() * (size // len(name)))
    return run


def killed_release(store, run_dir, point: str, holder: str = "flow-run-a") -> None:
    """Run the release in a child process that SIGKILLs itself right before `point`."""
    endpoint = store.client.meta.endpoint_url if hasattr(store, "client") else ""
    proc = subprocess.run([sys.executable, "-c", CHILD, store.uri, endpoint, point, str(run_dir), holder],
                          env={**os.environ, "GLOG_v": "3", "METADATA": json.dumps(METADATA)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def files_of(run_dir):
    return {p.name: p for p in run_dir.iterdir()}


@pytest.mark.parametrize("point", ["claimed", "uploading", "manifest"])
def test_a_release_killed_before_its_manifest_is_retried_at_once_by_the_same_flow_run(store, run_files, point):
    killed_release(store, run_files, point)
    assert store.exists(f"{VERSION}/.writing") and not store.exists(f"{VERSION}/manifest.json")
    with pytest.raises(WriteConflict, match=rf"{VERSION} is being written by another execution "
                                            r"\(flow run flow-run-a, host .* pid \d+"):
        publish_release(store, "sknet50", "v1", files_of(run_files), METADATA, holder="flow-run-b")
    pointer = publish_release(store, "sknet50", "v1", files_of(run_files), METADATA, holder="flow-run-a")
    assert pointer["version"] == "v1" and json.loads(store.get_bytes("releases/sknet50/LATEST")) == pointer
    for name, entry in read_manifest(store, VERSION)["files"].items():
        store.verify(f"{VERSION}/{name}", entry["size"], entry["sha256"])
    assert not store.exists(f"{VERSION}/.writing")


def test_a_claim_left_beside_the_manifest_by_a_kill_is_removed_by_the_retry(store, run_files):
    killed_release(store, run_files, "claim-removal")
    assert store.exists(f"{VERSION}/manifest.json") and store.exists(f"{VERSION}/.writing")
    assert not store.exists("releases/sknet50/LATEST")  # killed before LATEST moved
    pointer = publish_release(store, "sknet50", "v1", files_of(run_files), METADATA, holder="flow-run-a")
    assert pointer["version"] == "v1" and not store.exists(f"{VERSION}/.writing")


def test_a_claim_left_beside_the_manifest_by_a_kill_is_removed_by_promote(store, run_files):
    killed_release(store, run_files, "claim-removal")
    assert promote(store, "sknet50", "v1")["version"] == "v1"
    assert not store.exists(f"{VERSION}/.writing")
