"""`sknet release ls|promote` as users run it, on file:// and on S3 (moto)."""

import json

import pytest
from conftest import run_sknet

from sknet.release import publish_release
from sknet.storage import LocalStore, S3Store


@pytest.fixture(params=["file", "s3"])
def released(request, tmp_path):
    """(store, the CLI's storage arguments) with sknet50 v1 (0.91) and v2 (0.92, LATEST) released."""
    if request.param == "file":
        store = LocalStore(tmp_path / "bucket")
        args = ["--store", store.uri]
    else:
        server = request.getfixturevalue("s3_server")
        uri = f"s3://{request.getfixturevalue('bucket')}/sknet"
        store, args = S3Store(uri, endpoint_url=server.endpoint), ["--store", uri, "--endpoint-url", server.endpoint]
    for version, accuracy in (("v1", 0.91), ("v2", 0.92)):
        model = tmp_path / version / "model.mindir"
        model.parent.mkdir()
        model.write_bytes(version.encode() * 100)
        publish_release(store, "sknet50", version, {"model.mindir": model},
                        metadata={"metrics": {"top_1_accuracy": accuracy}})
    return store, args


def test_release_ls_prints_versions_metrics_and_latest(released):
    store, args = released
    listed = json.loads(run_sknet("-q", "release", "ls", *args, "--model", "sknet50").stdout)
    assert listed["store"] == store.uri and listed["models"]["sknet50"]["latest"] == "v2"
    versions = listed["models"]["sknet50"]["versions"]
    assert [(v["version"], v["metrics"]["top_1_accuracy"], v["latest"]) for v in versions] == [
        ("v1", 0.91, False), ("v2", 0.92, True)]
    assert all(v["released_at"] and v["complete"] for v in versions)
    assert list(json.loads(run_sknet("-q", "release", "ls", *args).stdout)["models"]) == ["sknet50"]


def test_release_promote_rolls_latest_back(released):
    store, args = released
    pointer = json.loads(run_sknet("-q", "release", "promote", *args, "--model", "sknet50", "--version", "v1").stdout)
    assert (pointer["version"], pointer["previous"], pointer["sequence"]) == ("v1", "v2", 3)
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v1"
    listed = json.loads(run_sknet("-q", "release", "ls", *args).stdout)["models"]["sknet50"]
    assert listed["latest"] == "v1" and [v["latest"] for v in listed["versions"]] == [True, False]


def test_release_promote_refuses_an_incomplete_version_naming_it(released):
    store, args = released
    store.put_bytes(b"half", "releases/sknet50/v3/model.mindir")
    proc = run_sknet("release", "promote", *args, "--model", "sknet50", "--version", "v3", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert (f"sknet: error: cannot promote {store.uri}/releases/sknet50/v3: version v3 of sknet50 is incomplete "
            "(no manifest.json; its publication never finished)") in proc.stderr
    proc = run_sknet("release", "promote", *args, "--model", "sknet50", "--version", "v7", check=False)
    assert proc.returncode == 2 and "version v7 of sknet50 does not exist" in proc.stderr
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v2"


def test_release_help_shows_examples():
    for command in (["release"], ["release", "ls"], ["release", "promote"]):
        out = run_sknet(*command, "--help").stdout
        assert "sknet release promote --store s3://my-bucket/sknet --model sknet50 --version" in out
