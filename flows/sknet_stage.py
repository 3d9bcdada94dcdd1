"""Stage a CIFAR-10 dataset into the store, then announce it: the event that starts retraining.

Staging takes the data's census first (class counts per split, exact duplicate images; `sknet.data.census`) and
refuses a skewed dataset unless `allow_skew`; the census is the `sknet-dataset-census` artifact and is in the
event's payload. When the dataset changed state (newly published, or objects of it missing or damaged and uploaded
again) the flow emits `sknet.dataset.staged`, whose resource is the dataset URI (with its digest and whether it
is synthetic). The `sknet-train` deployments in `deployments/prefect.yaml` are triggered by that event with
`dataset_uri` set to that URI. Staging data that is already there and intact uploads nothing and emits
nothing, so it starts nothing.

The event is delivered before the flow returns, or the flow fails (`EventNotDelivered`): `emit_event` only
queues an event for a background worker, which logs and drops it when the API cannot take it.
"""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import Event
from prefect.runtime import flow_run

from sknet.data.census import DEFAULT_MAX_CLASS_SKEW, census_markdown
from sknet.data.manifest import DATASETS_PREFIX
from sknet.errors import ConfigError
from sknet.storage import join
from tasks._support import refuse_untemplated, send_confirmed, use_aws_credentials_block
from tasks.data import stage_dataset

STAGED_EVENT = "sknet.dataset.staged"


class EventNotDelivered(RuntimeError):
    """The API did not confirm that it received the `sknet.dataset.staged` event."""


@flow(name="sknet-stage")
def sknet_stage(source: str, dest: str | None = None, publish_to: str | None = None,
                expected_md5: str | None = None, aws_credentials_block: str | None = None,
                max_class_skew: float = DEFAULT_MAX_CLASS_SKEW, allow_skew: bool = False) -> dict:
    """Publish a dataset under its manifest digest (or repair it there) and emit `sknet.dataset.staged` if it
    is new or was repaired.

    Args:
        source: the official tarball's URL, a tarball or a layout directory (`sknet data synth` writes one)
            readable by the worker. A presigned URL's token is kept out of logs, but it is a flow run
            parameter, shown in the UI: prefer a path or a public URL.
        dest: where datasets live, e.g. s3://bucket/datasets/cifar10; default `<publish_to>/datasets/cifar10`.
        publish_to: the store the training deployments publish to (the deployment sets it).
        expected_md5: the tarball's MD5 when it is not the official CIFAR-10 one.
        aws_credentials_block: a Prefect AwsCredentials block for the bucket; default: the worker's environment.
        max_class_skew: refuse a split with a class off its mean count by more than this fraction (or missing).
        allow_skew: stage a skewed dataset anyway (the census records that the skew was allowed).
    """
    refuse_untemplated(publish_to=publish_to)
    if aws_credentials_block:
        use_aws_credentials_block(aws_credentials_block)
    if not (dest or publish_to):
        raise ConfigError("sknet-stage needs dest (a datasets prefix) or publish_to (a store URI)")
    staged = stage_dataset(source, dest or join(publish_to, DATASETS_PREFIX), expected_md5, max_class_skew, allow_skew)
    create_markdown_artifact(key="sknet-dataset-census", markdown=census_markdown(staged.get("census"), staged["uri"]))
    if staged["published"] or staged["repaired"]:
        event = announce(staged)
        get_run_logger().info("emitted %s for %s (event %s, received by the API)", STAGED_EVENT, staged["uri"],
                              event.id)
    return staged


def announce(staged: dict) -> Event:
    """Send `sknet.dataset.staged` for `staged` and return once the API has received it; else raise
    `EventNotDelivered`. The event id is fixed per flow run and dataset, so a retry that sends it again is
    recorded and acted on once (the server drops an event id it has seen)."""
    event = Event(event=STAGED_EVENT, resource=dataset_resource(staged), payload=staged,
                  id=uuid.uuid5(uuid.UUID(flow_run.id), staged["uri"]))
    try:
        send_confirmed(event)
    except Exception as exc:  # noqa: BLE001 - whatever stopped it, the event is not known to have arrived
        raise EventNotDelivered(
            f"{STAGED_EVENT} for {staged['uri']} was not received by the Prefect API ({type(exc).__name__}: "
            f"{exc}); the dataset is staged, but no training starts on it. Once the API takes events (its "
            f"websocket /events/in must be reachable), retry this flow run (`prefect flow-run retry {flow_run.id}`, "
            f"with `--entrypoint flows/sknet_stage.py:sknet_stage` for a run without a deployment): it reuses "
            f"this stage's result and sends the event again") from exc
    return event


def dataset_resource(staged: dict) -> dict[str, str]:
    """The event's resource: the dataset URI is its id (as it is the dataset's asset key in lineage)."""
    return {"prefect.resource.id": staged["uri"], "prefect.resource.name": f"cifar10 {staged['digest'][:12]}",
            "sknet.dataset.digest": staged["digest"], "sknet.dataset.synthetic": str(staged["synthetic"]).lower()}


if __name__ == "__main__":
    sknet_stage()
