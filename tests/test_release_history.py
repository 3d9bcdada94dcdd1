"""The audit trail of LATEST (every release and promotion recorded by the compare-and-swap that moves it) on
file:// and on S3 (moto), and the events a move sends, received by a real Prefect API."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import race, run_sknet
from helpers import latest, release_files
from sknet.release import LatestNotMoved, history, promote, publish_release
from sknet.release import registry as release
from sknet.release.history import release_facts
from sknet.storage import LocalStore, WriteConflict

S3_PREFIX = "trail"
FLOW_RUN = "6f1f5a2e-0c1d-4b7e-9a55-0d5c7f3c2b11"
DATASET = {"uri": "s3://data/datasets/cifar10/d1g?X-Amz-Signature=s3cr3t", "digest": "d" * 64}


class Crash(BaseException):
    """The process dies here (not an error a caller could catch and carry on from)."""


def released(store, tmp_path, *versions: str, model: str = "sknet50", **facts) -> list[dict]:
    return [publish_release(store, model, v, *release_files(tmp_path, v, 0.9 + n / 100, **facts))
            for n, v in enumerate(versions)]


def stored_records(store, model: str = "sknet50") -> list[dict]:
    return [json.loads(store.get_bytes(o.key)) for o in store.list(f"release-history/{model}/")]


def test_every_move_of_latest_is_recorded_oldest_first_with_why_metrics_and_run_url(store, tmp_path):
    facts = release_facts(FLOW_RUN, f"http://127.0.0.1:4200/flow-runs/flow-run/{FLOW_RUN}", DATASET)
    released(store, tmp_path, "v1", "v2", **facts)
    promote(store, "sknet50", "v1", reason="v2 misses on\nnight data", by="alice@ops-1")
    records, notes = history(store, "sknet50")
    assert notes == [] and [(r["sequence"], r["from"], r["to"]) for r in records] == [
        (1, None, "v1"), (2, "v1", "v2"), (3, "v2", "v1")]
    assert [r["why"] for r in records] == [f"released by run {FLOW_RUN}"] * 2 + [
        "promoted by alice@ops-1: v2 misses on night data"]
    assert [r["metrics"]["top_1_accuracy"] for r in records] == [0.9, 0.91, 0.9]
    assert all(r["run_url"] == facts["run_url"] and r["flow_run_id"] == FLOW_RUN for r in records)
    assert records[0]["dataset"]["uri"] == "s3://data/datasets/cifar10/d1g?X-Amz-Signature=REDACTED"
    assert [r["previous"] for r in records] == [None, records[0]["id"], records[1]["id"]]
    assert records[0]["when"] < records[1]["when"] < records[2]["when"]
    assert latest(store)["move"] == records[-1] and stored_records(store) == records


def test_history_starts_at_the_first_recorded_move_of_a_latest_written_before_the_trail(store, tmp_path):
    store.put_bytes(json.dumps({"version": "old", "uri": "x", "metrics": {}, "sequence": 4}).encode(),
                    "releases/sknet50/LATEST")
    assert history(store, "sknet50") == ([], ["LATEST of sknet50 holds no move record (written before the "
                                              "release trail was kept, or there is no release): history starts at "
                                              "the first recorded move"])
    released(store, tmp_path, "v1")
    [record], notes = history(store, "sknet50")
    assert notes == [] and (record["sequence"], record["from"], record["to"], record["previous"]) == (
        5, "old", "v1", None)
    assert history(store, "no-such-model") == ([], [])


def test_concurrent_moves_record_exactly_the_moves_that_won(store, tmp_path):
    released(store, tmp_path, "base")
    files = [release_files(tmp_path, f"v{n}", 0.95) for n in range(4)]
    calls = [lambda n=n, f=f: publish_release(store, "sknet50", f"v{n}", *f) for n, f in enumerate(files)]
    calls += [lambda n=n: promote(store, "sknet50", "base", reason=f"rollback {n}") for n in range(2)]
    results = race(calls)
    assert all(isinstance(r, (dict, LatestNotMoved, WriteConflict)) for r in results), results
    won = sorted((r["sequence"], r["version"]) for r in results if isinstance(r, dict))
    records, notes = history(store, "sknet50")
    assert notes == [] and [(r["sequence"], r["to"]) for r in records] == [(1, "base")] + won  # no loser recorded
    assert [r["sequence"] for r in records] == list(range(1, len(records) + 1))
    assert all(b["from"] == a["to"] and b["previous"] == a["id"] for a, b in zip(records, records[1:], strict=False))
    assert stored_records(store) == records and latest(store)["move"] == records[-1]


def test_a_move_that_loses_the_race_leaves_no_record_and_is_judged_again(store, tmp_path, monkeypatch):
    released(store, tmp_path, "v1", "v2")
    read, raced = release._read_latest, []

    def read_then_race(s, model, **options):  # another release moves LATEST between the read and the write
        held = read(s, model, **options)
        if not raced:
            raced.append("v3")
            released(store, tmp_path, "v3")
        return held

    monkeypatch.setattr(release, "_read_latest", read_then_race)
    promote(store, "sknet50", "v1", by="bob@ops-2")
    records, _ = history(store, "sknet50")
    assert [(r["sequence"], r["from"], r["to"]) for r in records] == [
        (1, None, "v1"), (2, "v1", "v2"), (3, "v2", "v3"), (4, "v3", "v1")]
    assert records[-1]["why"] == "promoted by bob@ops-2" and "reason" not in records[-1]
    assert stored_records(store) == records  # the lost attempt (v2 → v1 as move 3) left nothing


def test_a_crash_after_the_move_loses_no_record_and_the_next_move_keeps_it(store, tmp_path, monkeypatch):
    released(store, tmp_path, "v1")

    def crash(*args):
        raise Crash

    monkeypatch.setattr(release, "keep_own_record", crash)
    with pytest.raises(Crash):
        released(store, tmp_path, "v2")
    monkeypatch.undo()
    assert latest(store)["version"] == "v2" and [r["to"] for r in stored_records(store)] == ["v1"]
    assert [r["to"] for r in history(store, "sknet50")[0]] == ["v1", "v2"]  # LATEST holds its own record
    released(store, tmp_path, "v3")
    assert [r["to"] for r in stored_records(store)] == ["v1", "v2", "v3"] == [r["to"] for r in history(store,
                                                                                                     "sknet50")[0]]


def test_a_crash_before_the_move_leaves_history_as_latest_says(store, tmp_path, monkeypatch):
    released(store, tmp_path, "v1")
    conditional_write = store.put_bytes_if

    def crash_at_latest(data, key, tag):
        if key.endswith("/LATEST"):
            raise Crash
        return conditional_write(data, key, tag)

    monkeypatch.setattr(store, "put_bytes_if", crash_at_latest)
    with pytest.raises(Crash):
        released(store, tmp_path, "v2")
    monkeypatch.undo()
    assert latest(store)["version"] == "v1"
    assert [r["to"] for r in history(store, "sknet50")[0]] == ["v1"] == [r["to"] for r in stored_records(store)]


def test_records_off_the_chain_are_not_shown_and_a_missing_one_ends_the_history(store, tmp_path):
    released(store, tmp_path, "v1", "v2", "v3")
    records = stored_records(store)
    forged = {**records[1], "id": "0" * 16, "to": "evil"}
    store.put_bytes(json.dumps(forged).encode(), f"release-history/sknet50/00000002-{'0' * 16}.json")
    shown, notes = history(store, "sknet50")
    assert shown == records and notes == [f"{store.uri}/release-history/sknet50: 1 record(s) not on LATEST's chain "
                                          "(from before a malformed LATEST was replaced, or a store without "
                                          "conditional writes): not shown"]
    store.delete(f"release-history/sknet50/00000001-{records[0]['id']}.json")
    shown, notes = history(store, "sknet50")
    assert [r["to"] for r in shown] == ["v2", "v3"]
    assert notes[0] == (f"{store.uri}/release-history/sknet50: the record before move 2 (id {records[0]['id']}) is "
                        "missing or unreadable: history before move 2 is not known")


def test_a_malformed_latest_replaced_by_promote_starts_the_history_again_and_says_so(tmp_path):
    store = LocalStore(tmp_path / "bucket")
    released(store, tmp_path, "v1", "v2")
    store.put_bytes(b'{"version": "v2", "sequence": "7"}', "releases/sknet50/LATEST")
    promote(store, "sknet50", "v1", reason="repair", by="carol@ops-3")
    [record], [note] = history(store, "sknet50")
    assert (record["sequence"], record["from"], record["to"], record["previous"]) == (1, None, "v1", None)
    assert note.endswith("2 record(s) not on LATEST's chain (from before a malformed LATEST was replaced, or a "
                         "store without conditional writes): not shown")


def test_promote_refuses_an_empty_or_overlong_reason_before_moving_anything(tmp_path):
    from sknet.errors import ConfigError

    store = LocalStore(tmp_path / "bucket")
    released(store, tmp_path, "v1", "v2")
    for reason in ("", " \n", "x" * 501):
        with pytest.raises(ConfigError, match=r"--reason: expected 1 to 500 characters of text"):
            promote(store, "sknet50", "v1", reason=reason)
    assert latest(store)["version"] == "v2" and len(stored_records(store)) == 2


# --- events -------------------------------------------------------------------------------------------------


def events_named(name: str, resource_id: str, expect: int = 1, timeout: float = 30) -> list[dict]:
    """The events called `name` about `resource_id` the Prefect API has, once it has `expect` of them (or timeout)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            response = client.request("POST", "/events/filter", json={"filter": {
                "event": {"name": [name]}, "occurred": {"since": "2020-01-01T00:00:00Z"}}, "limit": 50})
        events = [e for e in response.json()["events"] if e["resource"]["prefect.resource.id"] == resource_id]
        if len(events) >= expect or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def check_related(event: dict, flow_run_id: str) -> None:
    related = {r["prefect.resource.role"]: r for r in event["related"]}
    assert related["flow-run"]["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}"
    assert related["dataset"]["prefect.resource.id"] == "s3://data/datasets/cifar10/d1g?X-Amz-Signature=REDACTED"
    assert related["dataset"]["sknet.dataset.digest"] == "d" * 64
    assert "s3cr3t" not in json.dumps(event)


def test_promote_sends_sknet_release_promoted_to_the_prefect_api(prefect_api, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL

    store = LocalStore(tmp_path / "bucket")
    facts = release_facts(FLOW_RUN, f"http://127.0.0.1:4200/flow-runs/flow-run/{FLOW_RUN}", DATASET)
    released(store, tmp_path, "v1", "v2", **facts)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    out = json.loads(run_sknet("-q", "release", "promote", "--store", store.uri, "--model", "sknet50",
                               "--version", "v1", "--reason", "rollback: v2 misses").stdout)
    assert out["event"]["sent"] is True and out["event"]["event"] == "sknet.release.promoted"
    [event] = events_named("sknet.release.promoted", f"{store.uri}/releases/sknet50")
    assert event["id"] == out["event"]["id"] and event["resource"]["sknet.model"] == "sknet50"
    payload = event["payload"]
    assert (payload["from"], payload["to"], payload["sequence"]) == ("v2", "v1", 3)
    assert payload["why"].endswith(": rollback: v2 misses") and payload["why"].startswith("promoted by ")
    assert payload["metrics"] == {"top_1_accuracy": 0.9} and payload["run_url"] == facts["run_url"]
    check_related(event, FLOW_RUN)


def test_a_release_by_the_flow_publish_task_sends_sknet_release_published(prefect_api, tmp_path):
    from prefect import flow
    from prefect.runtime import flow_run

    from sknet.config import load_config
    from sknet.plan import RunPlan
    from sknet.storage import sha256_file
    from tasks.publish import publish_release as publish_task

    store = LocalStore(tmp_path / "bucket")
    cfg = load_config("cpu-smoke", {"storage.uri": store.uri})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, body in (("model.mindir", "mindir"), ("step-60.ckpt", "ckpt"), ("config.yaml", cfg.to_yaml())):
        (run_dir / name).write_text(body)
    model = {"path": str(run_dir / "model.mindir"), "sha256": sha256_file(run_dir / "model.mindir"),
             "input_shape": [1, 3, 32, 32], "dynamic_batch": False, "max_abs_diff": 0.0, "parameters": 1234}
    run = {"step": 60, "checkpoint": str(run_dir / "step-60.ckpt"), "checkpoint_sha256": sha256_file(
        run_dir / "step-60.ckpt")}
    metrics = {"top_1_accuracy": 0.93, "top_5_accuracy": 0.99, "loss": 0.2, "samples": 320, "synthetic_data": True}

    @flow(name="release-event-test")
    def release_flow() -> tuple[dict, str]:
        plan = RunPlan(run_id="v1", output_dir=str(run_dir), cache_dir=str(tmp_path / "cache"), store_uri=store.uri,
                       model="sknet-tiny", flow_run_id=str(flow_run.get_id()))
        return publish_task(cfg, plan, {**DATASET, "synthetic": True}, run, metrics, model), plan.flow_run_id

    pointer, flow_run_id = release_flow()
    [record], _ = history(store, "sknet-tiny")
    assert record["why"] == f"released by run {flow_run_id}" and flow_run_id in record["run_url"]
    [event] = events_named("sknet.release.published", f"{store.uri}/releases/sknet-tiny")
    payload = event["payload"]
    assert (payload["from"], payload["to"], payload["sequence"]) == (None, "v1", 1)
    assert payload["metrics"]["top_1_accuracy"] == 0.93 and payload["run_url"] == record["run_url"]
    assert payload["uri"] == pointer["uri"] and event["resource"]["prefect.resource.name"] == "sknet-tiny"
    check_related(event, flow_run_id)


class Recorder(BaseHTTPRequestHandler):
    """An HTTP endpoint that records each request's path, Authorization header and body, answering `status`."""

    status, seen = 204, []

    def do_POST(self):  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    Recorder.seen, Recorder.status = [], 204
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()
    server.server_close()


def test_the_event_is_posted_with_the_api_key_or_auth_string_and_never_fails_the_promotion(recorder):
    from sknet.release.events import send_event

    server, api = recorder
    event = {"event": "sknet.release.promoted", "id": str(uuid.uuid4()), "resource": {"prefect.resource.id": "m"}}
    assert send_event(event, "2026-12-01T00:00:00+00:00", {"PREFECT_API_URL": api, "PREFECT_API_KEY": "k3y"})["sent"]
    assert send_event(event, "2026-12-01T00:00:00+00:00", {"PREFECT_API_URL": api + "/", "PREFECT_API_KEY": "k3y",
                                                           "PREFECT_API_AUTH_STRING": "admin:pass"})["sent"]
    assert [(path, auth) for path, auth, _ in Recorder.seen] == [
        ("/api/events", "Bearer k3y"), ("/api/events", "Basic YWRtaW46cGFzcw==")]
    assert Recorder.seen[0][2] == [{**event, "occurred": "2026-12-01T00:00:00+00:00"}]
    Recorder.status = 500
    failed = send_event(event, "2026-12-01T00:00:00+00:00", {"PREFECT_API_URL": api.replace("://", "://u:pw@")})
    assert failed["sent"] is False and "pw" not in failed["detail"]
    assert failed["detail"] == (f"not received by http://u:REDACTED@127.0.0.1:{server.server_port}/api/events "
                                "(HTTP 500 Internal Server Error)")
    assert Recorder.seen[2][:2] == ("/api/events", "Basic dTpwdw==")  # user info in the URL, as httpx sends it
    assert send_event(event, "t", {})["detail"] == ("no Prefect API configured (PREFECT_API_URL is not set): "
                                                    "event not sent")
    assert "ConnectionRefusedError" in send_event(event, "t", {"PREFECT_API_URL": "http://127.0.0.1:9/api"})["detail"]
