"""`python -m infra.notify`: the failure automation and its webhook block, against a real Prefect API.

That the notification really arrives (one POST for a gate miss, none for a pass) is proven end to end in
tests/test_e2e.py, where `make up` applies it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
