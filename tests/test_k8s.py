"""The Kubernetes job templates rendered by the real worker library (prefect-kubernetes), as its worker does
for every flow run: template + job variables → job configuration → manifest prepared for the flow run."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def render(template_name: str, values: dict) -> dict:
    """The Job manifest the Kubernetes worker would submit for a flow run with these job variables."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "infra" / "k8s" / template_name).read_text())
    configuration = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly-otter"))
    return configuration.job_manifest


def container_of(manifest: dict) -> dict:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def test_the_single_server_template_renders_into_an_ascend_job(prefect_api):
    manifest = render("base-job-template.json", {"image": "registry.example/sknet:1.2",
                                                 "env": {"AWS_ENDPOINT_URL": "https://obs.example"}})
    pod = manifest["spec"]["template"]["spec"]
    container = container_of(manifest)
    assert manifest["kind"] == "Job" and manifest["metadata"]["namespace"] == "sknet"
    assert container["image"] == "registry.example/sknet:1.2"
    assert container["args"] == ["prefect", "flow-run", "execute"]  # the worker's command runs the flow run
    assert container["resources"]["requests"]["huawei.com/Ascend910"] == 8
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == 8
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/hccn.conf"]]["hostPath"]["path"] == "/etc/hccn.conf"
    assert volumes[mounts["/usr/local/Ascend/driver"]]["hostPath"]["path"] == "/usr/local/Ascend/driver"
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert pod["terminationGracePeriodSeconds"] == 300  # the ranks' SIGTERM checkpoint fits in it
    assert pod["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://obs.example"
    assert "PREFECT__FLOW_RUN_ID" in env


def test_credentials_come_from_a_kubernetes_secret_never_from_plain_values(prefect_api):
    manifest = render("base-job-template.json", {"aws_secret_name": "team-a-obs"})
    env = {e["name"]: e for e in container_of(manifest)["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "team-a-obs", "key": key, "optional": True}


def test_job_variables_reach_the_manifest(prefect_api):
    manifest = render("base-job-template.json", {"ascend_devices": 4, "termination_grace_period_seconds": 600,
                                                 "node_selector": {"pool": "910b"}})
    pod = manifest["spec"]["template"]["spec"]
    assert container_of(manifest)["resources"]["limits"]["huawei.com/Ascend910"] == 4
    assert pod["terminationGracePeriodSeconds"] == 600 and pod["nodeSelector"] == {"pool": "910b"}


def test_the_multi_server_template_is_generated_from_the_single_server_one():
    from infra.k8s_templates import BASE, MULTI, multi_server_template

    assert json.loads(MULTI.read_text()) == multi_server_template(json.loads(BASE.read_text()))


def test_each_node_of_a_multi_server_job_gets_a_stable_name_under_the_headless_service(prefect_api):
    import yaml

    manifests = {rank: render("multi-server-job-template.json", {"job_group": "n20261129", "node_rank": str(rank)})
                 for rank in (0, 1)}
    service = yaml.safe_load((REPO / "infra" / "k8s" / "nodes-service.yaml").read_text())
    for rank, manifest in manifests.items():
        pod_template = manifest["spec"]["template"]
        pod = pod_template["spec"]
        assert pod["hostname"] == f"n20261129-{rank}" and pod["subdomain"] == service["metadata"]["name"]
        assert "hostNetwork" not in pod  # hostname/subdomain DNS needs the pod network
        assert service["spec"]["selector"].items() <= pod_template["metadata"]["labels"].items()
        assert pod_template["metadata"]["labels"]["sknet.io/job-group"] == "n20261129"
        assert container_of(manifest)["resources"]["limits"]["huawei.com/Ascend910"] == 8
        assert pod["terminationGracePeriodSeconds"] == 300
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in service["spec"]["ports"]} == {8118}


@pytest.mark.parametrize("values, message", [
    ({"node_rank": "1"}, "'job_group' is a required property"),
    ({"job_group": "Nightly_29", "node_rank": "1"}, "does not match"),  # not a DNS label
])
def test_job_variables_a_multi_server_job_cannot_run_with_are_refused(values, message):
    import jsonschema  # what the Prefect server checks job variables with, when a flow run is created

    schema = json.loads((REPO / "infra" / "k8s" / "multi-server-job-template.json").read_text())["variables"]
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(values, schema)
