"""The `sknet-stage` flow in-process against a temporary Prefect API: it stages, and emits
`sknet.dataset.staged` only for data that was not staged yet. That the event starts a `sknet-train` run
through the deployments' trigger is proven against the real server and worker in tests/test_e2e.py."""

from __future__ import annotations

import time

import pytest

from sknet.errors import ConfigError


def staged_events(digest: str, expect: int, timeout: float = 30) -> list[dict]:
    """The `sknet.dataset.staged` events for `digest` the API has, once it has `expect` of them (or timeout)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            response = client.request("POST", "/events/filter", json={"filter": {
                "event": {"name": ["sknet.dataset.staged"]}, "occurred": {"since": "2020-01-01T00:00:00Z"}}})
        events = [e for e in response.json()["events"] if e["resource"].get("sknet.dataset.digest") == digest]
        if len(events) >= expect or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_new_data_is_staged_and_announced_once(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_stage import sknet_stage

    store = f"file://{tmp_path}/store"
    first = sknet_stage(source=str(synthetic_data), publish_to=store)
    assert first["published"] and first["uri"] == f"{store}/datasets/cifar10/{first['digest']}"
    assert (tmp_path / "store" / "datasets" / "cifar10" / first["digest"] / "manifest.json").is_file()
    [event] = staged_events(first["digest"], expect=1)
    assert event["resource"]["prefect.resource.id"] == first["uri"]
    assert event["resource"]["sknet.dataset.synthetic"] == "true"
    assert event["payload"]["digest"] == first["digest"]
    assert any(r["prefect.resource.role"] == "flow-run" for r in event["related"])  # emitted from the flow run

    again = sknet_stage(source=str(synthetic_data), dest=f"{store}/datasets/cifar10")
    assert again["uri"] == first["uri"] and not again["published"]
    time.sleep(3)  # an event would have reached the API by now (the first one did within this)
    assert len(staged_events(first["digest"], expect=2, timeout=3)) == 1


def test_a_deployment_made_without_its_variables_fails_before_staging(prefect_api, synthetic_data, tmp_path):
    from flows.sknet_stage import sknet_stage

    with pytest.raises(ConfigError, match="SKNET_PUBLISH_TO"):
        sknet_stage(source=str(synthetic_data), publish_to="")
    with pytest.raises(ConfigError, match="needs dest"):
        sknet_stage(source=str(synthetic_data))
