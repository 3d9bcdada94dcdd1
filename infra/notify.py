"""Failure notifications: the automation in `deployments/notify-on-failure.yaml`, pointed at SKNET_NOTIFY_URL.

    SKNET_NOTIFY_URL=https://hooks.slack.com/services/… python -m infra.notify    # against $PREFECT_API_URL
    python -m infra.notify --url https://example.com/hook
    python -m infra.notify --off                                                 # nothing is sent any more

Idempotent: the webhook block `sknet-notify` is overwritten and the automation replaced (by name), so running
it again with another URL moves the notifications. With no URL the automation and the block are removed.
`make up` runs it with the SKNET_NOTIFY_URL of its environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

AUTOMATION_FILE = Path(__file__).resolve().parent.parent / "deployments" / "notify-on-failure.yaml"
BLOCK_NAME = "sknet-notify"
URL_SECRET = "notify_url"  # the URL lives in the block's secrets, masked in the UI and API


def apply(url: str | None) -> str | None:
    """Point the failure automation at `url` (creating or replacing it and its block), or remove both when url
    is empty. Returns the automation's id, or None when removed."""
    check_url(url)
    definition = yaml.safe_load(AUTOMATION_FILE.read_text())
    _delete_automations(definition["name"])
    if not url:
        _delete_block()
        return None
    for action in definition["actions"]:
        if action["type"] == "send-notification":
            action["block_document_id"] = _save_block(url)
    from prefect.automations import Automation

    return str(Automation.model_validate(definition).create().id)


def check_url(url: str | None) -> None:
    """Refuse what is not an http(s) URL (before anything is changed); empty means off."""
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"SKNET_NOTIFY_URL must be an http(s) webhook URL, got {url.split('?')[0][:40]!r}")


def apply_to(api_url: str, url: str | None) -> str | None:
    """`apply` against the Prefect API at `api_url` (whatever this process's profile says)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return apply(url)


def _save_block(url: str) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url="{{%s}}" % URL_SECRET, secrets={URL_SECRET: url},
                                           json_data={"text": "{{subject}}\n{{body}}"})
    return str(block.save(BLOCK_NAME, overwrite=True))


def _delete_automations(name: str) -> None:
    """Delete every automation called `name` (there may be several, e.g. made by hand with `prefect automation
    create`); the block is overwritten by the next save, so only turning notifications off deletes it."""
    from prefect.automations import Automation
    from prefect.exceptions import ObjectNotFound

    while True:
        try:
            Automation.read(name=name).delete()
        except (ValueError, ObjectNotFound):
            return


def _delete_block() -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.exceptions import ObjectNotFound

    try:
        CustomWebhookNotificationBlock.delete(BLOCK_NAME)
    except (ValueError, ObjectNotFound):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.notify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("SKNET_NOTIFY_URL", ""),
                        help="webhook URL (default $SKNET_NOTIFY_URL; empty: remove the notification)")
    parser.add_argument("--off", action="store_true", help="remove the notification automation and its block")
    args = parser.parse_args(argv)
    try:
        automation = apply(None if args.off else args.url)
    except ValueError as error:
        print(f"infra.notify: error: {error}", file=sys.stderr)
        return 2
    print(f"failure notifications: {'on (automation ' + automation + ')' if automation else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
