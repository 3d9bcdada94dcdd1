"""`sknet release ls|promote` as users run it, on file:// and on S3 (moto)."""

import json
import tempfile
from pathlib import Path

import pytest

from conftest import run_sknet, sknet_main
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


def test_release_commands_refuse_a_model_or_version_that_is_not_one_path_segment(released, tmp_path):
    from sknet.release import publish_run

    store, args = released
    failed = tmp_path / "gate-failed" / "model.mindir"
    failed.parent.mkdir()
    failed.write_bytes(b"a model that failed the gate")
    publish_run(store, "gate-failed-run", {"model.mindir": failed})
    proc = run_sknet("release", "promote", *args, "--model", "sknet50", "--version", "../../runs/gate-failed-run",
                     check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert ("sknet: error: --version '../../runs/gate-failed-run': expected one path segment: letters, digits, "
            "'.', '_' or '-' ([A-Za-z0-9._-]+), not '.' or '..'") in proc.stderr
    proc = run_sknet("release", "ls", *args, "--model", "..", check=False)
    assert proc.returncode == 2 and "sknet: error: --model '..': expected one path segment" in proc.stderr
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v2"


def test_release_promote_and_ls_see_a_version_whose_model_was_deleted_as_incomplete(released):
    store, args = released
    store.delete("releases/sknet50/v1/model.mindir")
    proc = run_sknet("release", "promote", *args, "--model", "sknet50", "--version", "v1", check=False)
    assert proc.returncode == 2 and (
        f"sknet: error: cannot promote {store.uri}/releases/sknet50/v1: version v1 of sknet50 is incomplete: "
        "model.mindir: missing, manifest.json records 200 bytes") in proc.stderr
    v1 = json.loads(run_sknet("-q", "release", "ls", *args).stdout)["models"]["sknet50"]["versions"][0]
    assert (v1["version"], v1["complete"], v1["damaged"]) == (
        "v1", False, {"model.mindir": "missing, manifest.json records 200 bytes"})
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v2"


def history_of(args) -> list[dict]:
    return [json.loads(line) for line in
            run_sknet("-q", "release", "history", *args, "--model", "sknet50", "--json").stdout.splitlines()]


def test_release_history_prints_every_move_oldest_first(released):
    import re

    _, args = released
    run_sknet("-q", "release", "promote", *args, "--model", "sknet50", "--version", "v1", "--reason", "rollback")
    records = history_of(args)
    assert [(r["sequence"], r["from"], r["to"]) for r in records] == [(1, None, "v1"), (2, "v1", "v2"), (3, "v2", "v1")]
    assert [r["why"] for r in records[:2]] == ["released by run v1", "released by run v2"]
    assert re.fullmatch(r"promoted by \S+@\S+: rollback", records[2]["why"])
    lines = run_sknet("-q", "release", "history", *args, "--model", "sknet50").stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(records[0]["when"] + "  #1  (none) → v1  released by run v1")
    assert "#3  v2 → v1  promoted by " in lines[2] and lines[1].endswith("top_1_accuracy=0.9200")


def test_release_ls_at_says_what_latest_was_then(released):
    from datetime import datetime

    _, args = released
    first, second = history_of(args)
    between = datetime.fromisoformat(first["when"]) + (datetime.fromisoformat(second["when"]) -
                                                       datetime.fromisoformat(first["when"])) / 2
    then = json.loads(run_sknet("-q", "release", "ls", *args, "--model", "sknet50", "--at", between.isoformat()).stdout)
    assert (then["latest"], then["since"], then["move"]["sequence"]) == ("v1", first["when"], 1)
    now = json.loads(run_sknet("-q", "release", "ls", *args, "--model", "sknet50", "--at", "2999-01-01").stdout)
    assert (now["latest"], now["at"]) == ("v2", "2999-01-01T00:00:00+00:00")


def test_release_ls_at_refuses_a_bad_time_a_time_before_the_first_move_and_a_missing_model(released):
    _, args = released
    first = history_of(args)[0]
    for at, message in (
            ("yesterday", "--at 'yesterday': expected an ISO 8601 time, e.g. 2026-12-01T06:00:00Z or 2026-12-01 "
                          "(UTC unless an offset is given)"),
            ("2000-01-01T00:00:00+02:00", "1999-12-31T22:00:00+00:00 is before the first recorded move of "
                                          f"LATEST of sknet50 ({first['when']}: (none) → v1); sknet50 had no release "
                                          "before it")):
        proc = run_sknet("release", "ls", *args, "--model", "sknet50", "--at", at, check=False)
        assert proc.returncode == 2 and proc.stdout == "" and f"sknet: error: {message}" in proc.stderr, proc.stderr
    proc = run_sknet("release", "ls", *args, "--at", "2026-12-01", check=False)
    assert proc.returncode == 2 and "release ls --at: name the model (--model M)" in proc.stderr


def test_release_promote_records_who_without_a_reason_and_says_no_event_was_sent_without_an_api(released,
                                                                                               monkeypatch):
    import getpass
    import socket

    _, args = released
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    proc = run_sknet("release", "promote", *args, "--model", "sknet50", "--version", "v1")
    pointer = json.loads(proc.stdout)
    assert pointer["move"]["why"] == f"promoted by {getpass.getuser()}@{socket.gethostname()}"
    assert pointer["event"]["sent"] is False and pointer["event"]["event"] == "sknet.release.promoted"
    assert ("sknet: note: sknet.release.promoted: no Prefect API configured (PREFECT_API_URL is not set): event "
            "not sent") in proc.stderr
    assert history_of(args)[-1] == pointer["move"]


def overwrite_in_place(store, key: str) -> None:
    """16 bytes of the object changed, its size the same (a disk fault, a hand edit, a bad sync)."""
    data = bytearray(store.get_bytes(key))
    data[:16] = b"\xff" * 16
    store.put_bytes(bytes(data), key)


def test_a_release_damaged_in_place_is_no_release_to_stand_on(released, capsys):
    """Issue #27 §3: 16 bytes of v1's model.mindir overwritten at the same size: the unchanged-skip
    (`release_with_key`) trains instead, `release ls --verify` names the file, promote refuses it."""
    from sknet.release.training_key import release_with_key

    store, args = released
    key = "a" * 64
    model = store.get_bytes("releases/sknet50/v1/model.mindir")
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.mindir"
        path.write_bytes(model)
        publish_release(store, "sknet50", "v3", {"model.mindir": path},
                        metadata={"metrics": {"top_1_accuracy": 0.93}, "training_key": key})
    assert release_with_key(store, "sknet50", key)["version"] == "v3"
    overwrite_in_place(store, "releases/sknet50/v3/model.mindir")
    assert release_with_key(store, "sknet50", key) is None  # not "unchanged since release v3": the run trains
    by_size = json.loads(sknet_main(capsys, "-q", "release", "ls", *args, "--model", "sknet50")[1])
    assert by_size["models"]["sknet50"]["versions"][-1]["complete"]  # sizes alone cannot tell
    verified = json.loads(sknet_main(capsys, "-q", "release", "ls", *args, "--model", "sknet50", "--verify")[1])
    v3 = verified["models"]["sknet50"]["versions"][-1]
    assert v3["version"] == "v3" and not v3["complete"] and list(v3["damaged"]) == ["model.mindir"]
    code, _, err = sknet_main(capsys, "release", "promote", *args, "--model", "sknet50", "--version", "v3")
    assert code == 2 and "version v3 of sknet50 is incomplete: model.mindir:" in err


def test_release_ls_names_a_missing_store_a_malformed_uri_and_an_unknown_model(released, tmp_path, capsys):
    """Issue #27 §16: each exited 0 with an empty listing."""
    _, args = released
    for store, message in ((str(tmp_path / "nowhere"), "is not a directory (no such store)"),
                           ("s3:/bad", "not a store URI"), ("s3://", "no bucket")):
        code, out, err = sknet_main(capsys, "release", "ls", "--store", store)
        assert code == 2 and message in err and out == "", store
    code, _, err = sknet_main(capsys, "release", "ls", *args, "--model", "sknet-tiny")
    assert code == 2 and "no release of model 'sknet-tiny'" in err and "sknet50" in err


def test_release_ls_prints_a_table_for_people_and_json_for_scripts(released, capsys):
    from sknet.cli import release_table

    store, args = released
    listing = json.loads(run_sknet("-q", "release", "ls", *args).stdout)  # piped: JSON, as scripts read it
    lines = release_table(listing).splitlines()
    assert lines[0].split() == ["model", "version", "released", "at", "top-1", "top-5", "state"]
    assert lines[1].split()[:2] == ["sknet50", "v1"] and "91.00 %" in lines[1] and lines[1].endswith("complete")
    assert "92.00 %" in lines[2] and lines[2].endswith("LATEST")
    assert json.loads(sknet_main(capsys, "-q", "release", "ls", *args, "--json")[1]) == listing
    table = sknet_main(capsys, "-q", "release", "ls", *args, "--table")[1]
    assert table.strip() == release_table(listing)
