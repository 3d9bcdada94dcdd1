"""`python -m infra.notify`: the failure automation and its webhook block, against a real Prefect API.

That the notification really arrives (one POST for a gate miss, none for a pass) is proven end to end in
tests/test_e2e.py, where `make up` applies it. What a hostile run's notification says, and what the server logs
when the webhook answers 500, is checked here against the stack's own `prefect server` (infra.stack, with
infra/server-logging.yml), a run failed through its API: no worker, no training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_escaping_and_redaction import CHAT_HOSTILE, check_chat_safe

REPO = Path(__file__).resolve().parent.parent
NAME = "sknet-train failed"


@pytest.fixture
def automations(prefect_api):
    from prefect.client.orchestration import get_client

    def named() -> list:
        with get_client(sync_client=True) as client:
            return client.read_automations_by_name(NAME)

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
    assert str(automation.id) == second and automation.enabled
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
    assert apply("") is None
    assert automations() == []
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
    request = urllib.request.Request(f"{stack.api_url}/{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


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
