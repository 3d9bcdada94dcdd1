"""The multi-server Kubernetes job template, derived from the single-server one (one source of truth).

`python -m infra.k8s_templates` rewrites `infra/k8s/multi-server-job-template.json`; a test checks that the
committed file is what this produces.

Several servers are one job and each server runs one flow run of it (same `run_id` parameter, its own
`launch.node_rank`), as with process-pool workers. What Kubernetes adds is a stable name for node 0: each
pod gets the hostname `<job_group>-<node_rank>` under the headless Service `sknet-nodes`
(`infra/k8s/nodes-service.yaml`), so every node reaches the master at
`<job_group>-0.sknet-nodes.<namespace>.svc.cluster.local`. The pods use the pod network (hostname and
subdomain DNS need it); HCCL traffic goes over the NPUs' own NICs (`/etc/hccn.conf`) either way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

K8S = Path(__file__).resolve().parent / "k8s"
BASE = K8S / "base-job-template.json"
MULTI = K8S / "multi-server-job-template.json"
SERVICE = "sknet-nodes"
NODE_LABELS = {"app.kubernetes.io/name": "sknet-node", "sknet.io/job-group": "{{ job_group }}"}

MULTI_VARIABLES = {
    "job_group": {"title": "Job group", "description": "Names the nodes of one multi-server job: pod hostnames "
                  "are <job_group>-<node_rank>; use the flow's run_id (a DNS label: lowercase letters, digits, -).",
                  "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$"},
    "node_rank": {"title": "Node rank", "description": "This pod's node: equal to the flow run's launch.node_rank.",
                  "type": "string", "pattern": "^[0-9]+$", "default": "0"},
}


def multi_server_template(base: dict) -> dict:
    """The base template with a stable per-node hostname under the headless Service, on the pod network."""
    template = copy.deepcopy(base)
    template["variables"]["description"] = (
        "One Kubernetes Job per node of a multi-server sknet-train job (one flow run per node, same run_id), on "
        "an Ascend node with its devices, driver and /etc/hccn.conf mounted. Pods are named "
        f"<job_group>-<node_rank>.{SERVICE}: node 0 is the msrun master.")
    template["variables"]["properties"].update(MULTI_VARIABLES)
    template["variables"]["required"] = ["job_group"]
    manifest = template["job_configuration"]["job_manifest"]
    pod_template = manifest["spec"]["template"]
    pod_template["metadata"] = {"labels": dict(NODE_LABELS)}  # the Service selects the first
    pod = pod_template["spec"]
    del pod["hostNetwork"]
    pod["dnsPolicy"] = "ClusterFirst"
    pod["hostname"] = "{{ job_group }}-{{ node_rank }}"
    pod["subdomain"] = SERVICE
    return template


def main() -> None:
    MULTI.write_text(json.dumps(multi_server_template(json.loads(BASE.read_text())), indent=2) + "\n")
    print(f"wrote {MULTI}")


if __name__ == "__main__":
    main()
