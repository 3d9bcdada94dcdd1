"""What the tasks share (orchestration only): the retry preset, credentials from a Prefect block, asset keys
and metadata for lineage events, and the live progress artifact."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.assets import add_asset_metadata
from prefect.context import AssetContext

from sknet.errors import ConfigError
from sknet.launch.launcher import LaunchError
from sknet.storage import PermanentStorageError, StorageError, is_object_store_uri


def transient_only(task, task_run, state) -> bool:
    """Retry transient failures (storage/network, a crashed rank), never bad input or a gate miss."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, PermanentStorageError):
        return False  # a prefix without a manifest, a malformed object, a bad URI: waiting changes nothing
    if isinstance(error, (StorageError, ConnectionError, TimeoutError)):
        return True
    result = error.result if isinstance(error, LaunchError) else None
    # a rank that diverged, or refused its config or data, would do the same again
    return result is not None and result.failed_rank is not None and not result.diverged and not result.bad_input


def retry_transient(retries: int = 3, delay_seconds: float = 5) -> dict:
    """The retry settings of a task that talks to storage or runs ranks: `@task(**retry_transient())`."""
    return {"retries": retries, "retry_delay_seconds": delay_seconds, "retry_condition_fn": transient_only}


def use_aws_credentials_block(name: str) -> None:
    """Load the prefect-aws `AwsCredentials` block `name` into this process's environment (boto3, the ranks)."""
    try:
        from prefect_aws import AwsCredentials
    except ImportError:
        raise ConfigError(f"aws_credentials_block={name!r}: the worker needs the prefect-aws package "
                          "(pip install prefect-aws), or leave the parameter empty to use its environment") from None
    credentials = AwsCredentials.load(name)
    secret = credentials.aws_secret_access_key
    endpoint = getattr(credentials.aws_client_parameters, "endpoint_url", None)
    values = {
        "AWS_ACCESS_KEY_ID": credentials.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else None,
        "AWS_SESSION_TOKEN": credentials.aws_session_token,
        "AWS_PROFILE": credentials.profile_name,
        "AWS_DEFAULT_REGION": credentials.region_name,
        "AWS_ENDPOINT_URL": str(endpoint) if endpoint else None,
    }
    for key, value in values.items():  # the block replaces the worker's AWS settings, none are mixed in
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)


DEVICE_TAGS = ("ascend", "gpu", "cpu")  # the deployments' tags for the device their default profile runs on


def run_tags(tags, config: str, device_target: str) -> list[str]:
    """A flow run's tags for the config it actually runs: the deployment's, with its device tag replaced by the
    run's (`train.device_target`) and `config:<name>` added (a cpu-smoke run of nightly is no `ascend` run)."""
    kept = [t for t in tags if t not in DEVICE_TAGS and not t.startswith("config:")]
    return [*kept, device_target.lower(), f"config:{Path(str(config)).stem}"]


def tag_flow_run(config: str, device_target: str) -> None:
    """Set this flow run's tags to `run_tags` (a run without an API, or a failing call, keeps its tags: logged)."""
    from prefect.client.orchestration import get_client
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    if not flow_run.get_id():
        return
    tags = run_tags(flow_run.get_tags(), config, device_target)
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id=flow_run.get_id(), tags=tags)
    except Exception as exc:  # noqa: BLE001 - tags are a signal, never a reason to fail the night
        get_run_logger().warning("flow run tags not updated (%s: %s)", type(exc).__name__, exc)


EVENT_ATTEMPTS = 5  # connections the events client tries before a send fails


def send_confirmed(event) -> None:
    """The one way our flows and tasks send an event (a `prefect.events.Event`, or `emit_event`'s keyword
    arguments as a dict): with its run's related resources (as `emit_event` attaches them), through an events
    client that checkpoints after every event — after the send it pings and waits for the pong, which the server
    sends on reading the ping, so after the event's frame (Prefect's own checkpoint). Returns once the API has
    received it; raises what stopped it (a connection refused, rejected or closed, after `EVENT_ATTEMPTS` tries
    where retrying can help). `emit_event` would only queue it for a worker that drops it when the API is down.
    A resent event (a retried task) keeps its id, which the server records once."""
    from prefect.client.orchestration import get_client
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.events.related import related_resources_from_run_context
    from prefect.utilities.asyncutils import run_coro_as_sync

    event = event if isinstance(event, Event) else Event(**event)

    async def send() -> None:
        async with get_client() as orchestration:
            event.related += await related_resources_from_run_context(
                orchestration, exclude={resource.id for resource in event.involved_resources})
        async with get_events_client(reconnection_attempts=EVENT_ATTEMPTS - 1, checkpoint_every=1) as events:
            await events.emit(event)

    run_coro_as_sync(send())


def asset_key(uri: str) -> str:
    """A URI usable as an asset key: s3:// and file:// stay, a plain path becomes file://<absolute path>."""
    return uri if is_object_store_uri(uri) else f"file://{Path(uri).resolve()}"


def describe_assets(metadata: dict) -> None:
    """Attach `metadata` to every asset this task run materializes; nothing outside `@materialize`."""
    context = AssetContext.get()
    for asset in context.downstream_assets if context else ():
        add_asset_metadata(asset, metadata)


def progress_artifact(key: str, description: str) -> Callable[[int, str], None]:
    """A progress artifact in the UI, and the function that moves it: `update(percent, description)`."""
    artifact = create_progress_artifact(0.0, key=key, description=description)
    return lambda percent, text: update_progress_artifact(artifact, percent, description=text)


# deployments/prefect.yaml fills these flow parameters from the environment of `prefect deploy`
DEPLOY_VARIABLES = {"dataset_uri": "SKNET_DATASET_URI", "publish_to": "SKNET_PUBLISH_TO",
                    "work_dir": "SKNET_WORK_DIR"}


def refuse_untemplated(**parameters: str | None) -> None:
    """An empty string is what `{{ $VAR }}` becomes when VAR was unset at deploy time: say so, before any work."""
    for name, value in parameters.items():
        if value == "":
            raise ConfigError(f"parameter {name} is empty: the deployment was made without {DEPLOY_VARIABLES[name]} "
                              f"set (prefect.yaml reads it when you deploy); set it and deploy again, or run with "
                              f"--param {name}=…")
