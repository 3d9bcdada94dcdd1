"""One pod of a multi-server Kubernetes job: its node's launch settings, then its node's flow run.

`infra/k8s/multi-server-job-template.json` runs one flow run as an Indexed Job of `launch.nodes` pods behind the
headless Service `sknet-nodes`. Kubernetes names pod k `<job>-<k>` (k: its completion index), and the template
gives each pod SKNET_NODE, a JSON object: `launch`, the config overrides of its node — `launch.backend` msrun,
`launch.nodes`, `launch.node_rank` (the completion index), `launch.master_addr` (pod 0's DNS name),
`launch.master_port` (the Service's port) — and `npus`, the NPUs the pod requested (launch.ranks = nodes × npus).

Several servers are one job and one flow run per node (flows/sknet_train.py): the same parameters, the same
`run_id`, each its own `launch.node_rank`. So pod 0 runs the job's flow run itself, with the launch settings
merged into its `overrides` (visible in the UI); pod k > 0 runs the same flow with the same parameters as a flow
run of its own, named `<job's flow run>-node<k>`. Only the node holding rank 0 evaluates and releases.

    python3 infra/ascend/k8s_node.py      # the template's container command; needs PREFECT__FLOW_RUN_ID
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

NODE_ENV = "SKNET_NODE"
MASTER_DNS_TIMEOUT_SECONDS = 600  # pod 0's name resolves once it has an address (publishNotReadyAddresses)


class NodeError(Exception):
    """The pod's environment does not describe a node of a multi-server job."""


def node_launch(environ: Mapping[str, str]) -> dict[str, Any]:
    """This node's launch overrides, from the template's SKNET_NODE: its `launch`, and launch.ranks = nodes × npus."""
    text = environ.get(NODE_ENV, "")
    if not text or "$(" in text:
        raise NodeError(f"{NODE_ENV}={text!r}: expected the settings Kubernetes expands in a pod of "
                        "infra/k8s/multi-server-job-template.json")
    try:
        node = json.loads(text)
        launch, npus = dict(node["launch"]), node["npus"]
    except (ValueError, KeyError, TypeError) as error:
        raise NodeError(f"{NODE_ENV}={text!r}: {error}") from None
    counts = (launch.get("launch.nodes"), launch.get("launch.node_rank"), npus)
    if launch.get("launch.backend") != "msrun" or not all(isinstance(n, int) for n in counts):
        raise NodeError(f"{NODE_ENV}={text!r}: expected launch.backend msrun, and integer launch.nodes, "
                        "launch.node_rank and npus")
    return {**launch, "launch.ranks": launch["launch.nodes"] * npus}


def node_parameters(job_parameters: Mapping[str, Any], job_run_id: str, launch: Mapping[str, Any]) -> dict:
    """The parameters of this node's flow run: the job's, one `run_id` for all nodes, the template's launch."""
    parameters = dict(job_parameters)
    parameters["run_id"] = parameters.get("run_id") or job_run_id  # the flow's own default, pinned for every node
    parameters["overrides"] = {**(parameters.get("overrides") or {}), **launch}  # the template wins
    return parameters


def wait_for_master(address: str, timeout: float = MASTER_DNS_TIMEOUT_SECONDS) -> None:
    """Return once `address` resolves: msrun resolves it once, at start, and gives up if it cannot."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.getaddrinfo(address, None)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise NodeError(f"launch.master_addr {address} did not resolve in {timeout:.0f} s: is the "
                                "headless Service infra/k8s/nodes-service.yaml applied in this namespace?") from None
            time.sleep(2)


def main() -> int:
    from prefect.client.orchestration import get_client

    try:
        flow_run_id = UUID(os.environ.get("PREFECT__FLOW_RUN_ID", ""))
        launch = node_launch(os.environ)
        wait_for_master(launch["launch.master_addr"])
    except (NodeError, ValueError) as error:  # ValueError: no flow run id, not run by a Prefect worker
        print(f"k8s_node: {error}", file=sys.stderr)
        return 2
    node = launch["launch.node_rank"]
    with get_client(sync_client=True) as client:
        job_run = client.read_flow_run(flow_run_id)
        parameters = node_parameters(job_run.parameters, str(job_run.id), launch)
        if node == 0:
            client.update_flow_run(flow_run_id, parameters=parameters)
    if node == 0:
        os.execvp("prefect", ["prefect", "flow-run", "execute", str(flow_run_id)])
    os.environ.pop("PREFECT__FLOW_RUN_ID")  # this node's flow run is a new one, not the job's
    sys.path.insert(0, os.getcwd())  # flows/ and tasks/ are imported from the checkout, as the deployment does
    from flows.sknet_train import sknet_train

    sknet_train.with_options(flow_run_name=f"{job_run.name}-node{node}")(**parameters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
