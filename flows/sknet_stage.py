"""Stage a CIFAR-10 dataset into the store, then announce it: the event that starts retraining.

After a dataset is newly published the flow emits `sknet.dataset.staged`, whose resource is the dataset
URI (with its digest and whether it is synthetic). The `sknet-train` deployments in
`deployments/prefect.yaml` are triggered by that event with `dataset_uri` set to that URI. Staging data
that is already there (same manifest digest) uploads nothing and emits nothing, so it starts nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from sknet.data.stage import DATASETS_PREFIX
from sknet.errors import ConfigError
from sknet.storage import join
from tasks._support import refuse_untemplated, use_aws_credentials_block
from tasks.data import stage_dataset

STAGED_EVENT = "sknet.dataset.staged"


@flow(name="sknet-stage")
def sknet_stage(source: str, dest: str | None = None, publish_to: str | None = None,
                expected_md5: str | None = None, aws_credentials_block: str | None = None) -> dict:
    """Publish a dataset under its manifest digest and emit `sknet.dataset.staged` if it is new.

    Args:
        source: the official tarball's URL, a tarball or a layout directory (`sknet data synth` writes one)
            readable by the worker. A presigned URL's token is kept out of logs, but it is a flow run
            parameter, shown in the UI: prefer a path or a public URL.
        dest: where datasets live, e.g. s3://bucket/datasets/cifar10; default `<publish_to>/datasets/cifar10`.
        publish_to: the store the training deployments publish to (the deployment sets it).
        expected_md5: the tarball's MD5 when it is not the official CIFAR-10 one.
        aws_credentials_block: a Prefect AwsCredentials block for the bucket; default: the worker's environment.
    """
    refuse_untemplated(publish_to=publish_to)
    if aws_credentials_block:
        use_aws_credentials_block(aws_credentials_block)
    if not (dest or publish_to):
        raise ConfigError("sknet-stage needs dest (a datasets prefix) or publish_to (a store URI)")
    staged = stage_dataset(source, dest or join(publish_to, DATASETS_PREFIX), expected_md5)
    if staged["published"]:
        event = emit_event(event=STAGED_EVENT, resource=dataset_resource(staged), payload=staged)
        get_run_logger().info("emitted %s for %s (event %s)", STAGED_EVENT, staged["uri"], event and event.id)
    return staged


def dataset_resource(staged: dict) -> dict[str, str]:
    """The event's resource: the dataset URI is its id (as it is the dataset's asset key in lineage)."""
    return {"prefect.resource.id": staged["uri"], "prefect.resource.name": f"cifar10 {staged['digest'][:12]}",
            "sknet.dataset.digest": staged["digest"], "sknet.dataset.synthetic": str(staged["synthetic"]).lower()}


if __name__ == "__main__":
    sknet_stage()
