"""`python -m infra.notify`: the failure automation and its webhook block, against a real Prefect API.

That the notification really arrives (one POST for a gate miss, none for a pass) is proven end to end in
tests/test_e2e.py, where `make up` applies it. What a hostile run's notification says, and what the server logs
when the webhook answers 500, is checked here against the stack's own `prefect server` (infra.stack, with
infra/server-logging.yml), a run failed through its API: no worker, no training.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import call_api
from test_escaping_and_redaction import CHAT_HOSTILE, check_chat_safe

REPO = Path(__file__).resolve().parent.parent
NAME = "sknet-train failed"
MISSING_NIGHT = "sknet-train/nightly missing"


@pytest.fixture
def automations(prefect_api):
    from prefect.client.orchestration import get_client

    def named(name: str = NAME) -> list:
        with get_client(sync_client=True) as client:
            return client.read_automations_by_name(name)

    yield named
    from infra.notify import apply

    apply(None)


def test_it_points_one_automation_at_the_webhook_and_keeps_the_url_secret(automations):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    from infra.notify import BLOCK_NAME, apply

    apply("https://hooks.example.com/services/T000/B000/first")
    second = apply("https://hooks.example.com/services/T000/B000/second")
    [automation] = automations()  # replaced, not added
    assert str(automation.id) == second[NAME] and automation.enabled
    assert set(automation.trigger.expect) == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    [action] = automation.actions
    block = CustomWebhookNotificationBlock.load(BLOCK_NAME)
    assert block.secrets.get_secret_value()["notify_url"].endswith("/second")
    with get_client(sync_client=True) as client:
        document = client.read_block_document_by_name(BLOCK_NAME, "custom-webhook", include_secrets=False)
    assert action.block_document_id == document.id
    assert "second" not in str(document.data)  # masked where the UI and the API show the block


def test_without_a_url_nothing_is_left_to_send(automations):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from infra.notify import BLOCK_NAME, apply

    apply("https://hooks.example.com/x")
    assert apply("") == {}
    assert automations() == [] and automations(MISSING_NIGHT) == []
    with pytest.raises(ValueError):
        CustomWebhookNotificationBlock.load(BLOCK_NAME)


def test_a_url_that_is_not_http_is_refused_and_changes_nothing(automations):
    from infra.notify import apply

    apply("https://hooks.example.com/kept")
    with pytest.raises(ValueError, match="SKNET_NOTIFY_URL must be an http"):
        apply("hooks.example.com/no-scheme")
    assert len(automations()) == 1


def test_make_up_refuses_a_bad_notify_url_before_starting_anything(tmp_path):
    env = {**os.environ, "SKNET_NOTIFY_URL": "ftp://hooks.example.com/x", "SKNET_PREFECT_PORT": "1"}
    proc = subprocess.run([sys.executable, "-m", "infra.stack", "up", "--work", str(tmp_path / "work")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "SKNET_NOTIFY_URL must be an http(s) webhook URL" in proc.stderr
    assert not (tmp_path / "work" / "store").exists() and not (tmp_path / "work" / "prefect").exists()


def test_one_command_applies_the_missing_night_alert_beside_the_failure_one_through_the_same_block(automations):
    from datetime import timedelta

    from infra.notify import apply

    apply("https://hooks.example.com/first")
    applied = apply("https://hooks.example.com/second")
    [failure], [missing] = automations(), automations(MISSING_NIGHT)  # each replaced, not added
    assert applied == {NAME: str(failure.id), MISSING_NIGHT: str(missing.id)} and missing.enabled
    trigger = missing.trigger
    assert (trigger.posture, trigger.expect, trigger.after) == ("Proactive", {"prefect.flow-run.Completed"},
                                                                {"prefect.flow-run.Completed"})
    assert trigger.within == timedelta(hours=26) and trigger.threshold == 1
    related = [spec.root for spec in trigger.match_related]
    assert {"prefect.resource.role": "flow", "prefect.resource.name": "sknet-train"} in related
    assert {"prefect.resource.role": "deployment", "prefect.resource.name": "nightly"} in related
    assert missing.actions[0].block_document_id == failure.actions[0].block_document_id


def test_the_missing_night_alert_fires_a_window_after_the_last_nightly_run_completed(tmp_path):
    """The YAML with a 15 s window instead of 26 h, on the stack's own server: a nightly run completes, then a
    smoke run (another deployment: not counted); one window after the nightly one, the webhook hears of it."""
    import yaml

    from infra.notify import AUTOMATION_FILES, apply_to
    from infra.stack import Stack
    from sknet.ports import free_port
    from test_e2e import WebhookReceiver

    within = 15
    definition = yaml.safe_load(AUTOMATION_FILES[1].read_text())
    short = tmp_path / "missing-night.yaml"
    short.write_text(yaml.safe_dump({**definition, "trigger": {**definition["trigger"], "within": within}}))
    webhook, stack = WebhookReceiver(), Stack(tmp_path / "prefect", free_port())
    try:
        stack.start_server()
        apply_to(stack.api_url, webhook.url, (short,))
        flow = _post(stack, "flows/", {"name": "sknet-train"})
        completed = _complete_run(stack, flow["id"], "nightly", "nightly-run")
        _complete_run(stack, flow["id"], "smoke", "smoke-run")
        deadline = completed + within + 30  # + the server's 5 s evaluation period and the action's delivery
        while not webhook.posts:
            assert time.monotonic() < deadline, "no missing-night notification"
            time.sleep(0.5)
        arrived = time.monotonic()
    finally:
        stack.down()
        webhook.server.shutdown()
        webhook.server.server_close()
    assert arrived - completed >= within - 1  # the window began at the completed run, not when it was applied
    [post] = webhook.posts
    assert post["text"].startswith("sknet-train/nightly: no completed run for 26 hours\n"
                                   f"No sknet-train/nightly flow run has completed within 0:00:{within}.\n"
                                   "Last completed: nightly-run at ")


def _complete_run(stack, flow_id: str, deployment: str, name: str) -> float:
    """A run of `deployment` (made here) taken to Completed through the API; when it completed (monotonic)."""
    made = _post(stack, "deployments/", {"name": deployment, "flow_id": flow_id})
    run = _post(stack, f"deployments/{made['id']}/create_flow_run", {"name": name})
    for state in ({"type": "RUNNING"}, {"type": "COMPLETED"}):
        _post(stack, f"flow_runs/{run['id']}/set_state", {"state": state, "force": True})
    return time.monotonic()


SECRET_PATH = "/hooks/services/T000/SECRETTOKEN?token=QUERYSECRET"


@pytest.fixture(scope="module")
def notified(tmp_path_factory):
    """The stack's Prefect server with the failure automation pointed at a webhook that answers 500, and a
    `sknet-train` flow run failed with a hostile message; waits until Prefect gave up on the notification."""
    from infra.notify import apply_to
    from infra.stack import Stack
    from sknet.ports import free_port
    from test_e2e import WebhookReceiver

    webhook = WebhookReceiver(status=500, path=SECRET_PATH)
    stack = Stack(tmp_path_factory.mktemp("notify") / "prefect", free_port())
    log = stack.home / "server.log"
    try:
        stack.start_server()
        apply_to(stack.api_url, webhook.url)
        flow = _post(stack, "flows/", {"name": "sknet-train"})
        run = _post(stack, "flow_runs/", {"flow_id": flow["id"], "name": "hostile-run",
                                          "parameters": {"config": "cpu-smoke", "dataset_uri": CHAT_HOSTILE}})
        for state in ({"type": "RUNNING"}, {"type": "FAILED", "message": CHAT_HOSTILE}):
            _post(stack, f"flow_runs/{run['id']}/set_state", {"state": state})
        deadline = time.monotonic() + 120  # automations act on the event stream, seconds after the state change
        while "dead letter queue" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"Prefect did not give up on the webhook; got {webhook.posts}"
            time.sleep(1)
        yield {"posts": list(webhook.posts), "log": log.read_text(), "port": webhook.server.server_address[1]}
    finally:
        stack.down()
        webhook.server.shutdown()
        webhook.server.server_close()


def _post(stack, path: str, body: dict) -> dict:
    return call_api(stack.api_url, path, body)


def test_a_hostile_failed_run_reaches_the_webhook_without_mention_link_or_markup(notified):
    text = notified["posts"][0]["text"]
    check_chat_safe(text)
    assert text.startswith("sknet-train: a flow run did not complete\nsknet-train hostile-run: Failed\n")
    assert "Message: &lt;!channel&gt; *URGENT* &lt;https://evil.example/login|Open this run&gt;" in text


def test_a_webhook_answering_500_gets_four_posts_and_its_url_stays_out_of_the_server_log(notified):
    """Prefect's automation service retries an action that raised 3 times (README: failure notifications)."""
    assert len(notified["posts"]) == 4 and len({post["text"] for post in notified["posts"]}) == 1
    log = notified["log"]
    assert "SECRETTOKEN" not in log and "QUERYSECRET" not in log
    assert log.count(f"500 Internal Server Error' for url 'http://127.0.0.1:{notified['port']}/***'") == 4
