"""The generated parts of the Kubernetes job templates: the host mounts of both, and the multi-server template.

`python -m infra.k8s_templates` rewrites the host volumes of `infra/k8s/base-job-template.json` (the Ascend 910
one) from HOST_MOUNTS, then its Atlas A2 twin `base-job-template-910b.json` and the multi-server template of each
chip from it; a test checks that the committed files are what this produces. Everything else in the base
template is written by hand.

Each chip has its own templates because each chip has its own image (its CANN operator package): the Ascend
device plugin labels 910 and 910B nodes alike `accelerator: huawei-Ascend910`, so a template picks its nodes by
`node.kubernetes.io/npu.chip.name` — the chip Name `npu-smi info` prints, which the plugin reports: 910A, 910ProA,
910ProB, 910PremiumA for the Ascend 910, 910B1 … 910B4 for the 910B (MindCluster scheduling guide, "Native
Kubernetes Objects", node labels) — through a required node affinity, `npu_chip_names`.

The single-server template keeps `hostNetwork`: it runs the `ascend` backend, whose rank table names this
server by its host IP (`server_id`, `host_nic_ip`), which a pod sees as its own address only on the host's
network. Several servers with the `ascend` backend (one merged table, one flow run per server) need the same,
so they use the base template on each server, never the multi-server one.

The multi-server template runs msrun, which finds its peers through `master_addr:master_port` and so works on
the pod network: one flow run is an Indexed Job of `nodes` pods (node rank = completion index) behind the
headless Service `sknet-nodes` (`infra/k8s/nodes-service.yaml`). Kubernetes names pod k `<job>-<k>`, so
node 0, the master, is `<job>-0.sknet-nodes.<namespace>.svc` for every node. Each pod starts
`infra/ascend/k8s_node.py`, which turns SKNET_NODE (the launch settings below) into the flow run of its node.
HCCL traffic goes over the NPUs' own NICs either way.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from sknet.launch.admission import CHIP_FAMILIES
from sknet.launch.admission import CHIP_NAMES as CHIP_NAMES_OF_IMAGE  # the Dockerfile's CHIP → the family

K8S = Path(__file__).resolve().parent / "k8s"
BASE = K8S / "base-job-template.json"
MULTI = K8S / "multi-server-job-template.json"
CHIP_NAMES = {chip: list(CHIP_FAMILIES[CHIP_NAMES_OF_IMAGE[chip]]) for chip in CHIP_NAMES_OF_IMAGE}  # label values
CHIP_TITLES = {"910": "Atlas 800, Ascend 910", "910b": "Atlas A2, Ascend 910B"}
SERVICE = "sknet-nodes"
MASTER_PORT = 8118  # msrun's master port: the Service's port, the same on every node
NODE_LABELS = {"app.kubernetes.io/name": "sknet-node"}  # what the Service selects
NODE_COMMAND = ["python3", "infra/ascend/k8s_node.py"]  # from the image's WORKDIR, /opt/sknet-pipeline

# Host files reach the pod without stranding it on a node whose layout differs. A hostPath of type File fails
# the mount when the file is absent, and the pod never starts; an unchecked type ("") is worse, as the container
# runtime then creates an empty *directory* at the missing path on the host (where hccn_tool would later write
# hccn.conf). So directories every Ascend node has are mounted as Directory: the driver (hccn_tool is in its
# tools/) and dcmi. npu-smi moved between driver versions (/usr/local/bin, /usr/local/sbin): both host
# directories are mounted read-only under /host, which the image's PATH ends with. /etc/hccn.conf and
# /etc/ascend_install.info are FileOrCreate: on a node without them the pod still starts, with an empty file,
# and an empty hccn.conf is reported by name by `sknet ranktable` and `sknet preflight` instead of a pod left
# Pending; where the node has them, the ranks read the device IPs their rank tables need.
HOST_MOUNTS = (  # volume name, path on the host, path in the container, hostPath type
    ("ascend-driver", "/usr/local/Ascend/driver", "/usr/local/Ascend/driver", "Directory"),
    ("dcmi", "/usr/local/dcmi", "/usr/local/dcmi", "Directory"),
    ("host-sbin", "/usr/local/sbin", "/host/usr/local/sbin", "Directory"),
    ("host-bin", "/usr/local/bin", "/host/usr/local/bin", "Directory"),
    ("ascend-install-info", "/etc/ascend_install.info", "/etc/ascend_install.info", "FileOrCreate"),
    ("hccn-conf", "/etc/hccn.conf", "/etc/hccn.conf", "FileOrCreate"),
)

# The pod's node: its completion index, its Job's name and namespace (downward API), then SKNET_NODE, the
# launch settings built from them by Kubernetes' $(VAR) expansion (which sees the variables defined above it)
# and from the job variables; `npus`, the NPUs the pod requests, makes launch.ranks = nodes × npus.
NODE_SETTINGS = (
    '{"launch": {"launch.backend": "msrun", "launch.nodes": {{ nodes }}, "launch.node_rank": $(SKNET_NODE_RANK), '
    '"launch.master_addr": "$(SKNET_JOB_NAME)-0.' + SERVICE + '.$(SKNET_NAMESPACE).svc", '
    '"launch.master_port": ' + str(MASTER_PORT) + '}, "npus": {{ ascend_devices }}}'
)
NODE_ENV = [
    {"name": "SKNET_NODE_RANK", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    {"name": "SKNET_JOB_NAME", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}},
    {"name": "SKNET_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    {"name": "SKNET_NODE", "value": NODE_SETTINGS},
]

NODES_VARIABLE = {"title": "Nodes", "description": "Servers taking part: one pod per server, each requesting "
                  "ascend_devices NPUs; launch.ranks becomes nodes × ascend_devices.",
                  "type": "integer", "minimum": 2, "default": 2}


def with_host_mounts(template: dict) -> dict:
    """`template` with its hostPath volumes and their mounts replaced by HOST_MOUNTS (other volumes kept)."""
    template = copy.deepcopy(template)
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    others = [v for v in pod["volumes"] if "hostPath" not in v]
    kept = {v["name"] for v in others}
    pod["volumes"] = [{"name": name, "hostPath": {"path": host, "type": kind}}
                      for name, host, _, kind in HOST_MOUNTS] + others
    container["volumeMounts"] = [{"name": name, "mountPath": path, "readOnly": True}
                                 for name, _, path, _ in HOST_MOUNTS] + \
        [m for m in container["volumeMounts"] if m["name"] in kept]
    return template


def multi_server_template(base: dict) -> dict:
    """The base template as an Indexed Job of `nodes` msrun nodes under the headless Service, on the pod network."""
    template = copy.deepcopy(base)
    template["variables"]["description"] = (
        "One sknet-train flow run on several Ascend servers: an Indexed Job of `nodes` pods (node rank = "
        f"completion index) under the headless Service {SERVICE}, each with its devices, driver and "
        "/etc/hccn.conf mounted, launched with msrun; pod 0 is the master and runs the flow run, pod k runs "
        "node k's flow run with the same run_id (infra/ascend/k8s_node.py).")
    template["variables"]["properties"]["nodes"] = dict(NODES_VARIABLE)
    manifest = template["job_configuration"]["job_manifest"]
    # Job-level: N pods at once. (`parallelism`/`completions` inside the pod spec are prefect-kubernetes'
    # manifest check, which requires them to stay 1; Kubernetes ignores them there.)
    manifest["spec"] = {"completionMode": "Indexed", "completions": "{{ nodes }}", "parallelism": "{{ nodes }}",
                        **manifest["spec"]}
    pod_template = manifest["spec"]["template"]
    pod_template["metadata"] = {"labels": dict(NODE_LABELS)}
    pod = pod_template["spec"]
    del pod["hostNetwork"]
    pod["dnsPolicy"] = "ClusterFirst"
    pod["subdomain"] = SERVICE  # with the Job's <job>-<index> hostnames: a DNS name per node
    (container,) = pod["containers"]
    container["args"] = list(NODE_COMMAND)
    container["env"] = [*container["env"], *copy.deepcopy(NODE_ENV)]
    return template


def template_path(kind: Path, chip: str) -> Path:
    """`kind` (BASE or MULTI) for `chip`: the 910's keep their names, the others gain `-<chip>`."""
    return kind if chip == "910" else kind.with_name(f"{kind.stem}-{chip}{kind.suffix}")


def chip_template(base: dict, chip: str) -> dict:
    """The 910 base template for another chip: its image and the node affinity to that chip's nodes."""
    template = copy.deepcopy(base)
    variables = template["variables"]["properties"]
    variables["image"]["default"] = f"sknet-pipeline:ascend-{chip}"
    variables["image"]["description"] = (
        f"The image built from infra/ascend/Dockerfile with CHIP={chip} ({CHIP_TITLES[chip]}) on CANN 9.1.0; "
        "an image of one chip does not serve the other (use the other chip's template).")
    variables["npu_chip_names"]["default"] = list(CHIP_NAMES[chip])
    return template


def templates(base: dict) -> dict[Path, dict]:
    """Every committed template, generated from the hand-written 910 base (host mounts applied)."""
    base = with_host_mounts(base)
    out = {}
    for chip in CHIP_NAMES:
        single = base if chip == "910" else chip_template(base, chip)
        out[template_path(BASE, chip)] = single
        out[template_path(MULTI, chip)] = multi_server_template(single)
    return out


def main() -> None:
    for path, template in templates(json.loads(BASE.read_text())).items():
        path.write_text(json.dumps(template, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
