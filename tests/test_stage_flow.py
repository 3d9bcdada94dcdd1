"""The `sknet-stage` flow in-process against a temporary Prefect API: it stages, and emits
`sknet.dataset.staged` when the dataset changed state (new, or repaired), delivered before the flow returns
or the flow fails. That the event starts a `sknet-train` run through the deployments' trigger is proven
against the real server and worker in tests/test_e2e.py."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from conftest import artifact_of
from sknet.errors import ConfigError, DataError
from sknet.markdown import text


def staged_events(uri: str, expect: int, timeout: float = 30) -> list[dict]:
    """The `sknet.dataset.staged` events for dataset `uri` the API has, once it has `expect` of them (or timeout)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            response = client.request("POST", "/events/filter", json={"filter": {
                "event": {"name": ["sknet.dataset.staged"]}, "occurred": {"since": "2020-01-01T00:00:00Z"}}})
        events = [e for e in response.json()["events"] if e["resource"]["prefect.resource.id"] == uri]
        if len(events) >= expect or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_new_data_is_staged_and_announced_once(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_stage import sknet_stage

    store = f"file://{tmp_path}/store"
    first = sknet_stage(source=str(synthetic_data), publish_to=store)
    assert first["published"] and first["uri"] == f"{store}/datasets/cifar10/{first['digest']}"
    assert (tmp_path / "store" / "datasets" / "cifar10" / first["digest"] / "manifest.json").is_file()
    [event] = staged_events(first["uri"], expect=1)
    assert event["resource"]["prefect.resource.id"] == first["uri"]
    assert event["resource"]["sknet.dataset.synthetic"] == "true"
    assert event["payload"]["digest"] == first["digest"]
    assert event["payload"]["census"] == first["census"] and first["census"]["splits"]["test"]["records"] == 10_000
    assert any(r["prefect.resource.role"] == "flow-run" for r in event["related"])  # emitted from the flow run

    again = sknet_stage(source=str(synthetic_data), dest=f"{store}/datasets/cifar10")
    assert again["uri"] == first["uri"] and not again["published"]
    time.sleep(3)  # an event would have reached the API by now (the first one did within this)
    assert len(staged_events(first["uri"], expect=2, timeout=3)) == 1


def test_a_skewed_dataset_fails_the_flow_unless_allowed_and_its_census_is_the_artifact_and_in_the_event(
        prefect_api, synthetic_data, tmp_path):
    from flows.sknet_stage import sknet_stage
    from test_census import layout_copy, make_skewed

    skewed = make_skewed(layout_copy(synthetic_data, tmp_path / "skewed"))
    store = f"file://{tmp_path}/store"
    refused = sknet_stage(source=str(skewed), dest=store, return_state=True)
    error = refused.result(raise_on_failure=False)
    assert refused.is_failed() and isinstance(error, DataError) and "test class 'frog': no images" in str(error)
    assert not (tmp_path / "store").exists()  # refused before any upload: nothing staged, nothing announced

    allowed = sknet_stage(source=str(skewed), dest=store, allow_skew=True, return_state=True)
    staged = allowed.result()
    assert staged["published"] and staged["census"]["skew_allowed"] is True
    [event] = staged_events(staged["uri"], expect=1)
    assert event["payload"]["census"] == staged["census"]
    census = artifact_of(allowed, "sknet-dataset-census")
    assert census.startswith(f"# Data census of {text(staged['uri'])}\n") and "| frog | 5,000 | 0 |" in census
    assert "**class skew allowed** (--allow-skew): train class 'cat': 4,400 images, 12% below" in census
    shutil.rmtree(skewed)


def test_a_deployment_made_without_its_variables_fails_before_staging(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_stage import sknet_stage

    with pytest.raises(ConfigError, match="SKNET_PUBLISH_TO"):
        sknet_stage(source=str(synthetic_data), publish_to="")
    with pytest.raises(ConfigError, match="needs dest"):
        sknet_stage(source=str(synthetic_data))


def test_restaging_a_dataset_with_an_object_missing_repairs_it_and_announces_it(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_stage import sknet_stage
    from sknet.data.cache import verify_remote
    from sknet.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    first = sknet_stage(source=str(synthetic_data), dest=store.uri)
    store.delete(f"{first['digest']}/data_batch_3.bin")

    repaired = sknet_stage(source=str(synthetic_data), dest=store.uri)
    assert repaired["uri"] == first["uri"] and not repaired["published"]
    assert repaired["repaired"] == ["data_batch_3.bin"]
    assert verify_remote(first["uri"], store)["files"] == 8
    announced = staged_events(first["uri"], expect=2)
    assert sorted(e["payload"]["repaired"] for e in announced) == [[], ["data_batch_3.bin"]]

    intact = sknet_stage(source=str(synthetic_data), dest=store.uri)
    assert not intact["published"] and intact["repaired"] == []
    time.sleep(3)
    assert len(staged_events(first["uri"], expect=3, timeout=3)) == 2


class RefusingWebsockets:
    """A TCP proxy to the Prefect API that passes HTTP through and answers the events websocket (`/events/in`)
    with 403, as a load balancer without websocket support does."""

    def __init__(self, api_url: str):
        parts = urlsplit(api_url)
        self.upstream = (parts.hostname, parts.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}{parts.path}"
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := client.recv(65536)):
            head += chunk
        if b"/events/in " in head.split(b"\r\n", 1)[0]:
            self.refused += 1
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            client.close()
            return
        upstream = socket.create_connection(self.upstream)
        upstream.sendall(head)
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self) -> None:
        self.listener.close()


def pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_an_event_the_api_cannot_take_fails_the_flow_and_a_retry_of_the_run_delivers_it(
        prefect_api, synthetic_data, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    import flows.sknet_stage as stage_flow

    store = f"file://{tmp_path}/store"
    proxy = RefusingWebsockets(PREFECT_API_URL.value())
    try:
        with temporary_settings({PREFECT_API_URL: proxy.url}):
            state = stage_flow.sknet_stage(source=str(synthetic_data), dest=store, return_state=True)
    finally:
        proxy.close()
    assert state.is_failed() and proxy.refused >= 1
    error = state.result(raise_on_failure=False)
    assert isinstance(error, stage_flow.EventNotDelivered)
    assert f"sknet.dataset.staged for {store}/" in str(error) and "retry this flow run" in str(error)
    [manifest] = (tmp_path / "store").glob("*/manifest.json")  # the data is staged; only the event is missing
    uri = f"{store}/{manifest.parent.name}"
    assert staged_events(uri, expect=1, timeout=3) == []

    # `prefect flow-run retry` for a run without a deployment: scheduled again, then run here
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(state.state_details.flow_run_id, Scheduled(), force=True)
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    retried = run_flow(stage_flow.sknet_stage, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    assert retried.is_completed()
    [event] = staged_events(uri, expect=1)
    assert event["payload"]["published"] is True  # the first attempt's stage result, reused
