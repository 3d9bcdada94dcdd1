import json
import re

import pytest

from conftest import race
from helpers import latest, release_files
from sknet.config import load_config
from sknet.release import BeatLatest, LatestNotMoved, latest_release, move_latest, publish_release, publish_run
from sknet.release.lineage import lineage_record
from sknet.storage import IncompleteError, WriteConflict, publish, read_manifest, sha256_file


@pytest.fixture
def artifacts(tmp_path):
    model, metrics = tmp_path / "model.mindir", tmp_path / "metrics.json"
    model.write_bytes(b"mindir" * 1000)
    metrics.write_text(json.dumps({"top_1_accuracy": 0.91}))
    return {"model.mindir": model, "metrics.json": metrics}


def test_first_release_moves_latest_and_is_readable(store, artifacts):
    assert latest_release(store, "sknet50") is None
    pointer = publish_release(store, "sknet50", "2026-11-28-001", artifacts,
                              metadata={"metrics": {"top_1_accuracy": 0.91}})
    assert pointer["uri"] == f"{store.uri}/releases/sknet50/2026-11-28-001"
    current = latest_release(store, "sknet50")
    assert current["metrics"]["top_1_accuracy"] == 0.91
    assert current["files"]["model.mindir"]["sha256"] == sha256_file(artifacts["model.mindir"])


def test_a_release_version_is_immutable(store, artifacts):
    publish_release(store, "sknet50", "v1", artifacts)
    artifacts["model.mindir"].write_bytes(b"another model")
    with pytest.raises(IncompleteError, match="already released with other files; versions are immutable"):
        publish_release(store, "sknet50", "v1", artifacts)


def test_publishing_the_same_release_again_only_repoints_latest(store, artifacts, tmp_path):
    lineage = tmp_path / "lineage.json"
    lineage.write_text('{"created_at": "01:00"}')
    publish_release(store, "sknet50", "v1", {**artifacts, "lineage.json": lineage})
    store.delete("releases/sknet50/LATEST")  # as if the first attempt died right before moving it
    lineage.write_text('{"created_at": "01:20"}')  # a retried flow run writes a new lineage record
    pointer = publish_release(store, "sknet50", "v1", {**artifacts, "lineage.json": lineage})
    assert pointer["version"] == "v1"
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v1"
    assert json.loads(store.get_bytes("releases/sknet50/v1/lineage.json"))["created_at"] == "01:00"


def test_latest_moves_only_after_the_new_release_is_complete(store, artifacts, tmp_path):
    publish_release(store, "sknet50", "v1", artifacts)
    broken = dict(artifacts, **{"missing.bin": tmp_path / "does-not-exist.bin"})
    with pytest.raises(FileNotFoundError):
        publish_release(store, "sknet50", "v2", broken)
    assert json.loads(store.get_bytes("releases/sknet50/LATEST"))["version"] == "v1"
    assert not store.exists("releases/sknet50/v2/manifest.json")


def test_latest_records_the_release_time_and_counts_its_moves(store, tmp_path):
    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    pointer = publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.92))
    assert latest(store) == pointer and pointer["sequence"] == 2 and pointer["metrics"]["top_1_accuracy"] == 0.92
    assert pointer["released_at"] == read_manifest(store, "releases/sknet50/v2")["released_at"]


def test_a_retried_older_release_never_moves_latest_back(store, tmp_path):
    v1 = release_files(tmp_path, "v1", 0.91)
    publish_release(store, "sknet50", "v1", *v1)
    publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.90))
    with pytest.raises(LatestNotMoved, match=r"releases/sknet50/v1 is published, but LATEST stays at v2: "
                                             r"v1 \(released .*\) is older than v2 \(released .*\); "
                                             r"LATEST never moves back"):
        publish_release(store, "sknet50", "v1", *v1)  # v1's flow run, retried after v2 was released
    assert latest(store)["version"] == "v2" and latest(store)["sequence"] == 2


def test_a_retry_after_latest_moved_keeps_the_pointer(store, tmp_path):
    v1 = release_files(tmp_path, "v1", 0.91)
    first = publish_release(store, "sknet50", "v1", *v1)
    assert publish_release(store, "sknet50", "v1", *v1) == first == latest(store)


def test_a_model_that_does_not_beat_latest_at_release_time_is_not_uploaded(store, tmp_path):
    publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.95))
    with pytest.raises(LatestNotMoved, match=r"releases/sknet50/v3 is not published and LATEST stays at v2: compared "
                                             r"at release time, top_1_accuracy 0\.9300 < current release 0\.9500 "
                                             r"\+ margin 0\.0100"):
        publish_release(store, "sknet50", "v3", *release_files(tmp_path, "v3", 0.93),
                        beat_latest=BeatLatest("top_1_accuracy", 0.01))
    assert latest(store)["version"] == "v2" and store.list("releases/sknet50/v3/") == []


def test_files_against_latest_see_it_as_read_once_before_the_upload(store, tmp_path, monkeypatch):
    from sknet.release import registry as release

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    reads, seen, card = [], [], tmp_path / "MODEL_CARD.md"
    read = release._read_latest
    monkeypatch.setattr(release, "_read_latest",
                        lambda s, model, **options: reads.append(model) or read(s, model, **options))

    def card_against(latest):
        seen.append(latest["version"] if latest else None)
        card.write_text(f"replaces {seen[-1]}")
        return {"MODEL_CARD.md": card}

    v2 = release_files(tmp_path, "v2", 0.92)
    publish_release(store, "sknet50", "v2", *v2, beat_latest=BeatLatest("top_1_accuracy"), against_latest=card_against)
    assert seen == ["v1"] and len(reads) == 2  # one read serves the card and beat_latest, one moves LATEST
    assert store.get_bytes("releases/sknet50/v2/MODEL_CARD.md") == b"replaces v1"
    publish_release(store, "sknet50", "v2", *v2, against_latest=card_against)  # a retry after the move
    assert seen == ["v1"] and store.get_bytes("releases/sknet50/v2/MODEL_CARD.md") == b"replaces v1"


def test_latest_is_judged_again_when_it_moved_during_the_upload(store, tmp_path):
    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.90))
    files, metadata = release_files(tmp_path, "v3", 0.93)  # passed the gate against v1
    publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.95))  # released meanwhile
    manifest = publish(store, "releases/sknet50/v3", files, {**metadata, "released_at": "2100-01-01T00:00:00+00:00"})
    with pytest.raises(LatestNotMoved, match=r"v3 is published, but LATEST stays at v2: compared at release time, "
                                             r"top_1_accuracy 0\.9300 < current release 0\.9500"):
        move_latest(store, "sknet50", "v3", manifest, beat_latest=BeatLatest("top_1_accuracy"))
    assert latest(store)["version"] == "v2"


def test_a_latest_written_before_release_times_were_recorded_is_replaced(store, tmp_path):
    store.put_bytes(json.dumps({"version": "old", "uri": "x", "metrics": {}}).encode(), "releases/sknet50/LATEST")
    pointer = publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    assert latest(store) == pointer and pointer["sequence"] == 1


def test_concurrent_releases_never_lose_a_move_and_end_at_the_newest(store, tmp_path):
    for round_ in range(3):
        model, versions = f"m{round_}", [f"r{round_}-v{n}" for n in range(4)]
        releases = [release_files(tmp_path, version, 0.9) for version in versions]
        results = race([lambda v=v, r=r, m=model: publish_release(store, m, v, *r)
                        for v, r in zip(versions, releases, strict=True)])
        moved = [r for r in results if isinstance(r, dict)]
        assert all(isinstance(r, (dict, LatestNotMoved)) for r in results), results
        assert sorted(p["sequence"] for p in moved) == list(range(1, len(moved) + 1))  # one move each, none lost
        newest = max(versions, key=lambda v: read_manifest(store, f"releases/{model}/{v}")["released_at"])
        assert latest(store, model)["version"] == newest and latest(store, model)["sequence"] == len(moved)


def test_two_executions_of_one_version_leave_one_consistent_release(store, tmp_path):
    executions = [release_files(tmp_path, f"execution-{n}", 0.9) for n in range(2)]
    results = race([lambda files=files: publish_release(store, "sknet50", "v1", *files) for files in executions])
    winners = [n for n, r in enumerate(results) if isinstance(r, dict)]
    assert len(winners) == 1, results
    assert isinstance(results[1 - winners[0]], (WriteConflict, IncompleteError))
    manifest = read_manifest(store, "releases/sknet50/v1")
    entry = manifest["files"]["model.mindir"]
    assert entry["sha256"] == sha256_file(executions[winners[0]][0]["model.mindir"])
    store.verify("releases/sknet50/v1/model.mindir", entry["size"], entry["sha256"])  # the objects are the winner's
    assert not store.exists("releases/sknet50/v1/.writing") and latest(store)["version"] == "v1"


def test_run_outputs_are_published_under_the_run_id(store, artifacts):
    manifest = publish_run(store, "flow-run-123", artifacts)
    assert store.exists("runs/flow-run-123/manifest.json")
    assert set(manifest["files"]) == {"model.mindir", "metrics.json"}


def test_lineage_record_carries_digests_metrics_code_and_packages():
    cfg = load_config("cpu-smoke")
    record = lineage_record(cfg, run_id="r1", dataset_uri="s3://b/datasets/cifar10/abc", dataset_digest="abc",
                            synthetic_data=True, metrics={"top_1_accuracy": 0.9},
                            artifacts={"model.mindir": {"sha256": "f00"}})
    assert record["config"]["digest"] == cfg.digest()
    assert record["dataset"] == {"uri": "s3://b/datasets/cifar10/abc", "digest": "abc", "synthetic": True}
    assert record["code"]["packages"]["mindspore"].startswith("2.10")
    assert len(record["code"]["commit"].split("+")[0]) == 40


def test_ls_lists_versions_oldest_first_with_metrics_and_marks_latest(store, tmp_path):
    from sknet.release import list_releases

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.92))
    store.put_bytes(b"half", "releases/sknet50/v3/model.mindir")  # a publication that never finished
    publish_release(store, "other", "a", *release_files(tmp_path, "a", 0.5))
    listed = list_releases(store)
    assert sorted(listed) == ["other", "sknet50"] and listed["sknet50"]["latest"] == "v2"
    assert [v["version"] for v in listed["sknet50"]["versions"]] == ["v3", "v1", "v2"]  # unrecorded time first
    v3, v1, v2 = listed["sknet50"]["versions"]
    assert (v1["metrics"], v1["latest"], v1["complete"]) == ({"top_1_accuracy": 0.91}, False, True)
    assert v2["latest"] and v2["released_at"] == latest(store)["released_at"]
    assert v3 == {"version": "v3", "uri": f"{store.uri}/releases/sknet50/v3", "released_at": None, "metrics": {},
                  "latest": False, "complete": False}
    assert list(list_releases(store, "other")) == ["other"]


def test_promote_rolls_latest_back_and_a_late_older_release_does_not_undo_it(store, tmp_path):
    from sknet.release import promote

    v1, v2 = release_files(tmp_path, "v1", 0.91), release_files(tmp_path, "v2", 0.92)
    publish_release(store, "sknet50", "v1", *v1)
    publish_release(store, "sknet50", "v2", *v2)
    pointer = promote(store, "sknet50", "v1")
    assert pointer["previous"] == "v2" and pointer["sequence"] == 3 and pointer["metrics"]["top_1_accuracy"] == 0.91
    assert latest(store) == {k: v for k, v in pointer.items() if k != "previous"}
    with pytest.raises(LatestNotMoved, match=r"LATEST stays at v1: v2 \(released .*\) is older than v1 "
                                             r"\(released .*, promoted .*\); LATEST never moves back"):
        publish_release(store, "sknet50", "v2", *v2)  # v2's release retried after the rollback
    assert publish_release(store, "sknet50", "v3", *release_files(tmp_path, "v3", 0.93))["version"] == "v3"


@pytest.mark.parametrize("version, reason", [("v9", "does not exist"), ("v2", r"is incomplete \(no manifest.json")])
def test_promote_refuses_a_missing_or_incomplete_version_and_leaves_latest(store, tmp_path, version, reason):
    from sknet.release import promote

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    store.put_bytes(b"half", "releases/sknet50/v2/model.mindir")
    with pytest.raises(IncompleteError, match=rf"cannot promote {store.uri}/releases/sknet50/{version}: "
                                              rf"version {version} of sknet50 {reason}"):
        promote(store, "sknet50", version)
    assert latest(store)["version"] == "v1" and latest(store)["sequence"] == 1


def test_promote_is_a_compare_and_swap(store, tmp_path, monkeypatch):
    from sknet.release import registry as release

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.92))
    read = release._read_latest
    raced = []

    def read_then_race(s, model, **options):  # another release moves LATEST between the read and the write
        held = read(s, model, **options)
        if not raced:
            raced.append("v3")
            publish_release(store, "sknet50", "v3", *release_files(tmp_path, "v3", 0.93))
        return held

    monkeypatch.setattr(release, "_read_latest", read_then_race)
    pointer = release.promote(store, "sknet50", "v1")
    assert pointer["previous"] == "v3" and pointer["sequence"] == 4 and latest(store)["version"] == "v1"


def test_a_release_is_found_by_its_training_key(store, tmp_path):
    from sknet.release.training_key import release_with_key

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))  # before keys were recorded
    files, metadata = release_files(tmp_path, "v2", 0.92)
    publish_release(store, "sknet50", "v2", files, {**metadata, "training_key": "k2"})
    assert release_with_key(store, "sknet50", "k2")["version"] == "v2"
    assert release_with_key(store, "sknet50", "k2")["metrics"] == {"top_1_accuracy": 0.92}
    assert release_with_key(store, "sknet50", "k2", other_than="v2") is None  # a retry of v2's own flow run
    assert release_with_key(store, "sknet50", "k3") is None and release_with_key(store, "nomodel", "k2") is None


ESCAPES = ["../../escaped", "x/../../releases/sknet50/good-1", "..", ".", "", "a/b", "a b", "v1\n"]


def test_plan_run_refuses_a_run_id_that_is_not_one_path_segment_before_writing_anything(tmp_path):
    from sknet.errors import ConfigError
    from sknet.plan import plan_run

    for run_id in [name for name in ESCAPES if name]:  # no run_id at all: the flow run's id
        with pytest.raises(ConfigError, match=rf"run_id {re.escape(repr(run_id))}: expected one path segment: "
                                              r"letters, digits, '\.', '_' or '-' \(\[A-Za-z0-9\._-\]\+\), "
                                              r"not '\.' or '\.\.'"):
            plan_run("cpu-smoke", None, run_id=run_id, work_dir=tmp_path / "work", publish_to=f"file://{tmp_path}/s")
    assert list(tmp_path.iterdir()) == []
    plan = plan_run("cpu-smoke", None, run_id="2026-12-06_nightly.1", work_dir=tmp_path / "work",
                    flow_run_id="flow-run-a")[1]
    assert (plan.run_id, plan.flow_run_id) == ("2026-12-06_nightly.1", "flow-run-a")


def test_the_train_flow_refuses_a_run_id_that_leaves_its_directory_before_any_task(tmp_path):
    from flows.sknet_train import sknet_train
    from sknet.errors import ConfigError

    with pytest.raises(ConfigError, match=r"run_id '\.\./\.\./escaped': expected one path segment"):
        sknet_train.fn(config="cpu-smoke", run_id="../../escaped", work_dir=str(tmp_path / "work"),
                       publish_to=f"file://{tmp_path}/store")
    assert list(tmp_path.iterdir()) == []


def test_a_run_id_or_version_that_is_not_one_path_segment_never_reaches_a_release(store, tmp_path, artifacts):
    from sknet.errors import ConfigError

    publish_release(store, "sknet50", "good-1", *release_files(tmp_path, "good-1", 0.91))
    before = {o.key: store.get_bytes(o.key) for o in store.list()}
    for name in ESCAPES:
        with pytest.raises(ConfigError, match=rf"run id {re.escape(repr(name))}: expected one path segment"):
            publish_run(store, name, artifacts)
        with pytest.raises(ConfigError, match=rf"version {re.escape(repr(name))}: expected one path segment"):
            publish_release(store, "sknet50", name, artifacts)
        with pytest.raises(ConfigError, match=rf"model {re.escape(repr(name))}: expected one path segment"):
            publish_release(store, name, "v2", artifacts)
    assert {o.key: store.get_bytes(o.key) for o in store.list()} == before


def test_a_latest_naming_a_path_outside_its_model_is_refused_not_followed(store, tmp_path):
    from sknet.release import promote
    from sknet.storage import PermanentStorageError

    publish_release(store, "sknet50", "good-1", *release_files(tmp_path, "good-1", 0.91))
    publish_run(store, "gate-failed-run", *release_files(tmp_path, "gate-failed-run", 0.1))
    store.put_bytes(json.dumps({"version": "../../runs/gate-failed-run"}).encode(), "releases/sknet50/LATEST")
    refused = (rf"{store.uri}/releases/sknet50/LATEST: version '\.\./\.\./runs/gate-failed-run': expected one path "
               r"segment.*; LATEST is not followed: point it at a complete version with `sknet release promote`")
    with pytest.raises(PermanentStorageError, match=refused):
        latest_release(store, "sknet50")
    with pytest.raises(PermanentStorageError, match=refused):
        publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.95))
    assert latest(store)["version"] == "../../runs/gate-failed-run"  # nothing moved on top of it
    assert promote(store, "sknet50", "good-1")["version"] == "good-1"  # the repair
    assert latest_release(store, "sknet50")["metrics"] == {"top_1_accuracy": 0.91}


@pytest.mark.parametrize("damage, reason", [
    ("delete", "missing, manifest.json records 1,200 bytes"),
    ("truncate", "3 bytes, manifest.json records 1,200 bytes"),
])
def test_a_version_missing_a_file_of_its_manifest_is_not_complete(store, tmp_path, damage, reason):
    from sknet.release import list_releases, promote

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    publish_release(store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.92))
    if damage == "delete":
        store.delete("releases/sknet50/v1/model.mindir")
    else:
        store.put_bytes(b"cut", "releases/sknet50/v1/model.mindir")
    v1, v2 = list_releases(store, "sknet50")["sknet50"]["versions"]
    assert (v1["version"], v1["complete"], v2["complete"]) == ("v1", False, True)
    assert v1["damaged"] == {"model.mindir": reason} and "damaged" not in v2
    with pytest.raises(IncompleteError, match=rf"cannot promote {store.uri}/releases/sknet50/v1: version v1 of "
                                              rf"sknet50 is incomplete: model\.mindir: {re.escape(reason)}$"):
        promote(store, "sknet50", "v1")
    assert latest(store)["version"] == "v2"


def test_failing_to_remove_the_claim_after_the_manifest_is_a_warning_not_a_failure(store, tmp_path, monkeypatch,
                                                                                   caplog):
    import errno
    from pathlib import Path

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if hasattr(store, "client"):
        monkeypatch.setattr(store.client, "delete_object", disk_full)
    else:
        unlink = Path.unlink
        monkeypatch.setattr(Path, "unlink", lambda path, **kw: disk_full() if path.name == ".writing" else
                            unlink(path, **kw))
    v1 = release_files(tmp_path, "v1", 0.91)
    with caplog.at_level("WARNING", logger="sknet.storage"):
        pointer = publish_release(store, "sknet50", "v1", *v1, holder="flow-run-a")
    assert pointer["version"] == "v1" and latest(store)["version"] == "v1"
    assert f"could not remove the claim {store.uri}/releases/sknet50/v1/.writing (delete " in caplog.text
    monkeypatch.undo()
    assert store.exists("releases/sknet50/v1/.writing")
    assert publish_release(store, "sknet50", "v1", *v1) == pointer  # a retry of the release, or another one
    assert not store.exists("releases/sknet50/v1/.writing")  # the next publication removed it


MALFORMED_LATEST = {  # LATEST's bytes → what the refusal says is wrong with it
    "not JSON": (b"not json{", r"not valid JSON \(Expecting value"),
    "nested past the parser": (b"[" * 100_000 + b"]" * 100_000, r"not valid JSON \(maximum recursion depth"),
    "a list": (b"[1]", r"not a JSON object but b'\[1\]'"),
    "a text sequence": (b'{"version": "v1", "sequence": "7"}',
                        r"sequence '7': expected a whole number ≥ 1 \(the count of LATEST's moves\)"),
    "a boolean sequence": (b'{"version": "v1", "sequence": true}', r"sequence True: expected a whole number ≥ 1"),
    "a sequence of 0": (b'{"version": "v1", "sequence": 0}', r"sequence 0: expected a whole number ≥ 1"),
    "text metrics": (b'{"version": "v1", "metrics": "0.99"}',
                     r"metrics '0\.99': expected a JSON object of metric names and values"),
}


@pytest.fixture
def file_store(tmp_path):
    from sknet.storage import LocalStore

    return LocalStore(tmp_path / "bucket")


@pytest.mark.parametrize("name", MALFORMED_LATEST)
def test_a_malformed_latest_is_refused_naming_the_object_what_was_expected_and_the_repair(file_store, tmp_path, name):
    from sknet.storage import PermanentStorageError

    data, wrong = MALFORMED_LATEST[name]
    publish_release(file_store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    file_store.put_bytes(data, "releases/sknet50/LATEST")
    refused = (rf"^{file_store.uri}/releases/sknet50/LATEST: {wrong}.*; LATEST is not followed: point it at a "
               r"complete version with `sknet release promote` \(--model sknet50 --version V; `sknet release ls` "
               r"lists them\), which replaces a malformed LATEST: that is the repair$")
    with pytest.raises(PermanentStorageError, match=refused):
        publish_release(file_store, "sknet50", "v2", *release_files(tmp_path, "v2", 0.95))
    with pytest.raises(PermanentStorageError, match=refused):
        latest_release(file_store, "sknet50")
    assert file_store.get_bytes("releases/sknet50/LATEST") == data  # nothing moved on top of it


@pytest.mark.parametrize("name", MALFORMED_LATEST)
def test_promote_replaces_a_malformed_latest(file_store, tmp_path, name):
    from sknet.release import promote

    publish_release(file_store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    file_store.put_bytes(MALFORMED_LATEST[name][0], "releases/sknet50/LATEST")
    pointer = promote(file_store, "sknet50", "v1")
    assert (pointer["version"], pointer["previous"], pointer["sequence"]) == ("v1", None, 1)
    assert latest_release(file_store, "sknet50")["metrics"] == {"top_1_accuracy": 0.91}


def test_release_ls_reports_a_malformed_latest_and_still_lists_the_versions(store, tmp_path):
    from sknet.release import list_releases

    publish_release(store, "sknet50", "v1", *release_files(tmp_path, "v1", 0.91))
    store.put_bytes(b'{"version": "v1", "sequence": "7"}', "releases/sknet50/LATEST")
    listed = list_releases(store)["sknet50"]
    assert listed["latest"] is None and [(v["version"], v["latest"]) for v in listed["versions"]] == [("v1", False)]
    assert listed["latest_error"].startswith(f"{store.uri}/releases/sknet50/LATEST: sequence '7': expected a whole "
                                             "number ≥ 1")
