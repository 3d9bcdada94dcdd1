"""Notifications: the automations in `deployments/notify-on-failure.yaml` (a sknet-train run failed or crashed)
and `deployments/notify-on-missing-night.yaml` (no sknet-train/nightly run completed for 26 h), pointed at
SKNET_NOTIFY_URL.

    SKNET_NOTIFY_URL=https://hooks.slack.com/services/… python -m infra.notify    # against $PREFECT_API_URL
    python -m infra.notify --url https://example.com/hook
    python -m infra.notify --off                                                 # nothing is sent any more

Idempotent: the webhook block `sknet-notify` is overwritten and each automation replaced (by name), so running
it again with another URL moves the notifications. With no URL the automations and the block are removed.
`make up` runs it with the SKNET_NOTIFY_URL of its environment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

DEPLOYMENTS = Path(__file__).resolve().parent.parent / "deployments"
AUTOMATION_FILES = (DEPLOYMENTS / "notify-on-failure.yaml", DEPLOYMENTS / "notify-on-missing-night.yaml")
BLOCK_NAME = "sknet-notify"
URL_SECRET = "notify_url"  # the URL lives in the block's secrets, masked in the UI and API


def apply(url: str | None, files: tuple[Path, ...] = AUTOMATION_FILES) -> dict[str, str]:
    """Point the automations of `files` at `url` (creating or replacing them and their block), or remove them
    and the block when url is empty. Returns {automation name: id}, empty when removed."""
    from prefect.automations import Automation

    check_url(url)
    definitions = [yaml.safe_load(path.read_text()) for path in files]
    for definition in definitions:
        _delete_automations(definition["name"])
    if not url:
        _delete_block()
        return {}
    block = _save_block(url)
    for definition in definitions:
        for action in definition["actions"]:
            if action["type"] == "send-notification":
                action["block_document_id"] = block
    return {d["name"]: str(Automation.model_validate(d).create().id) for d in definitions}


def check_url(url: str | None) -> None:
    """Refuse what is not an http(s) URL (before anything is changed); empty means off."""
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"SKNET_NOTIFY_URL must be an http(s) webhook URL, got {url.split('?')[0][:40]!r}")


def apply_to(api_url: str, url: str | None, files: tuple[Path, ...] = AUTOMATION_FILES) -> dict[str, str]:
    """`apply` against the Prefect API at `api_url` (whatever this process's profile says)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return apply(url, files)


def _save_block(url: str) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(name=BLOCK_NAME, url=f"{{{{{URL_SECRET}}}}}", secrets={URL_SECRET: url},
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
    parser.add_argument("--off", action="store_true", help="remove the notification automations and their block")
    args = parser.parse_args(argv)
    try:
        automations = apply(None if args.off else args.url)
    except ValueError as error:
        print(f"infra.notify: error: {error}", file=sys.stderr)
        return 2
    on = ", ".join(f"{name!r} ({id_})" for name, id_ in automations.items())
    print(f"notifications: {'on: ' + on if automations else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
