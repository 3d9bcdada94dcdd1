"""The Kubernetes job templates rendered by the real worker library (prefect-kubernetes), as its worker does
for every flow run: template + job variables → job configuration → manifest prepared for the flow run; and the
Ascend image they run, checked against the installed MindSpore."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from sknet.config import load_config

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "infra" / "ascend" / "Dockerfile"
TEMPLATES = ("base-job-template.json", "multi-server-job-template.json", "base-job-template-910b.json",
             "multi-server-job-template-910b.json")
CHIPS = ("910", "910b")  # Atlas 800 (Ascend 910), Atlas A2 (Ascend 910B)


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
    assert pod["hostNetwork"] is True  # the ascend backend's rank table names this server by its host IP
    assert "completionMode" not in manifest["spec"]  # one pod, one server
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


def test_the_committed_templates_are_what_k8s_templates_generates():
    from infra.k8s_templates import BASE, templates

    generated = templates(json.loads(BASE.read_text()))  # `python -m infra.k8s_templates` writes them
    assert sorted(path.name for path in generated) == sorted(TEMPLATES)
    for path, template in generated.items():
        assert json.loads(path.read_text()) == template, path.name


def chip_affinity(manifest: dict) -> list[dict]:
    affinity = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    return affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


@pytest.mark.parametrize("chip, names", [("910", ["910A", "910ProA", "910ProB", "910PremiumA"]),
                                         ("910b", ["910B1", "910B2", "910B3", "910B4"])])
@pytest.mark.parametrize("kind", ["base-job-template", "multi-server-job-template"])
def test_each_chips_template_runs_its_image_only_on_nodes_of_that_chip(prefect_api, chip, names, kind):
    """The device plugin labels both chips accelerator=huawei-Ascend910: the chip is in npu.chip.name."""
    name = f"{kind}.json" if chip == "910" else f"{kind}-{chip}.json"
    manifest = render(name, {"nodes": 2} if kind.startswith("multi") else {})
    assert container_of(manifest)["image"] == f"sknet-pipeline:ascend-{chip}"
    assert chip_affinity(manifest) == [{"matchExpressions": [
        {"key": "node.kubernetes.io/npu.chip.name", "operator": "In", "values": names}]}]
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"accelerator": "huawei-Ascend910"}


def test_the_cpu_request_covers_every_ranks_dataset_workers_and_no_limit_throttles_them(prefect_api):
    resources = container_of(render("base-job-template.json", {}))["resources"]
    workers = load_config("cifar10-ascend8").data.num_parallel_workers  # per rank
    assert int(resources["requests"]["cpu"]) >= 8 * (workers + 2)
    assert "cpu" not in resources["limits"]  # unset: a CFS quota would throttle the input pipeline
    limited = container_of(render("base-job-template.json", {"cpu_limit": "96"}))["resources"]
    assert limited["limits"]["cpu"] == "96"


def host_mounts(manifest: dict) -> dict[str, tuple[dict, dict]]:
    """Container path → (hostPath, volumeMount) of every host mount of the rendered pod."""
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (volumes[m["name"]]["hostPath"], m) for m in container_of(manifest)["volumeMounts"]
            if "hostPath" in volumes[m["name"]]}


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_no_host_mount_can_keep_a_pod_from_starting_on_a_node_laid_out_differently(prefect_api, template_name):
    mounts = host_mounts(render(template_name, {}))
    # File fails the mount when the file is absent; an unchecked type has the runtime create a directory there
    assert {host.get("type") for host, _ in mounts.values()} <= {"Directory", "FileOrCreate"}
    assert mounts["/etc/hccn.conf"][0] == {"path": "/etc/hccn.conf", "type": "FileOrCreate"}  # the rank tables' IPs
    assert mounts["/etc/ascend_install.info"][0]["type"] == "FileOrCreate"
    assert mounts["/usr/local/Ascend/driver"][0] == {"path": "/usr/local/Ascend/driver", "type": "Directory"}
    # npu-smi is /usr/local/sbin/npu-smi or /usr/local/bin/npu-smi by driver version: both directories
    assert {mounts[f"/host/usr/local/{d}"][0]["path"] for d in ("sbin", "bin")} == {"/usr/local/sbin", "/usr/local/bin"}
    assert all(mount.get("readOnly") for _, mount in mounts.values())  # the pod never writes to the host


@pytest.mark.parametrize("template_name", TEMPLATES)
def test_the_image_finds_npu_smi_and_hccn_tool_where_the_templates_mount_them(prefect_api, template_name):
    mounted = host_mounts(render(template_name, {}))
    path = re.search(r"^\s*PATH=\$\{PATH\}:(\S+)", DOCKERFILE.read_text(), flags=re.M).group(1).split(":")
    assert "/usr/local/Ascend/driver/tools" in path and "/usr/local/Ascend/driver" in mounted  # hccn_tool
    assert {"/host/usr/local/sbin", "/host/usr/local/bin"} <= set(path) & set(mounted)  # npu-smi, wherever it is


def test_a_multi_server_job_is_an_indexed_job_of_pods_under_the_headless_service(prefect_api):
    import yaml

    from infra.k8s_templates import MASTER_PORT

    manifest = render("multi-server-job-template.json", {"nodes": 3})
    service = yaml.safe_load((REPO / "infra" / "k8s" / "nodes-service.yaml").read_text())
    spec, pod_template = manifest["spec"], manifest["spec"]["template"]
    pod = pod_template["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)  # all at once
    assert pod["subdomain"] == service["metadata"]["name"] and "hostname" not in pod  # Kubernetes: <job>-<index>
    assert "hostNetwork" not in pod and pod["dnsPolicy"] == "ClusterFirst"  # per-pod DNS needs the pod network
    assert service["spec"]["selector"].items() <= pod_template["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert {p["port"] for p in service["spec"]["ports"]} == {MASTER_PORT}
    container = container_of(manifest)
    assert container["args"] == ["python3", "infra/ascend/k8s_node.py"]  # relative to the image's WORKDIR
    assert re.search(r"^COPY .*infra/ascend/k8s_node\.py.* \./infra/ascend/$", DOCKERFILE.read_text(), flags=re.M)
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == 8  # per node
    assert pod["terminationGracePeriodSeconds"] == 300


COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOB_NAME = "metadata.labels['batch.kubernetes.io/job-name']"


def pod_environment(container: dict, fields: dict[str, str]) -> dict[str, str]:
    """The container's environment as Kubernetes gives it to a pod: downward-API fields, and each value's $(VAR)
    expanded with the variables defined before it."""
    environ: dict[str, str] = {}
    for var in container["env"]:
        if var.get("value") is not None:
            environ[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environ.get(m[1], m[0]), str(var["value"]))
        elif "fieldRef" in var.get("valueFrom", {}):
            environ[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return environ


def test_each_pod_launches_its_node_with_msrun_from_its_completion_index(prefect_api):
    from infra.ascend.k8s_node import node_launch
    from infra.k8s_templates import MASTER_PORT
    from sknet.config import load_config
    from sknet.launch.launcher import msrun_command
    from sknet.launch.ranks import plan_processes

    container = container_of(render("multi-server-job-template.json", {"nodes": 2}))
    master = "nightly-otter-x7k2p-0.sknet-nodes.sknet.svc"  # pod 0 of the Job, under the Service
    for index in (0, 1):
        fields = {COMPLETION_INDEX: str(index), JOB_NAME: "nightly-otter-x7k2p", "metadata.namespace": "sknet"}
        launch = node_launch(pod_environment(container, fields))
        assert launch == {"launch.backend": "msrun", "launch.nodes": 2, "launch.node_rank": index,
                          "launch.master_addr": master, "launch.master_port": MASTER_PORT, "launch.ranks": 16}
        cfg = load_config("cifar10-ascend8").override(launch)  # the profile's backend is ascend: the template wins
        (msrun,) = plan_processes(cfg, cfg.launch.master_port)  # what a real launch accepts, and starts
        assert msrun.ranks == tuple(range(8 * index, 8 * index + 8))
        command = msrun_command(cfg, cfg.launch.master_port, Path("logs"), ["python", "-m", "sknet.training"])
        assert {f"--node_rank={index}", f"--master_addr={master}", f"--master_port={MASTER_PORT}",
                "--worker_num=16", "--local_worker_num=8"} <= set(command)


def test_every_node_runs_the_jobs_parameters_with_one_run_id_and_the_templates_launch():
    from infra.ascend.k8s_node import node_parameters

    job = {"config": "cifar10-ascend8", "overrides": {"train.epochs": 1, "launch.backend": "ascend"}, "run_id": None}
    launch = {"launch.backend": "msrun", "launch.nodes": 2, "launch.node_rank": 1}
    parameters = node_parameters(job, "0b5e2c4e-job-flow-run", launch)
    assert parameters["run_id"] == "0b5e2c4e-job-flow-run"  # the flow's default for the job's own run, pinned
    assert parameters["overrides"] == {"train.epochs": 1, "launch.backend": "msrun", "launch.nodes": 2,
                                       "launch.node_rank": 1}
    assert parameters["config"] == "cifar10-ascend8" and job["overrides"]["launch.backend"] == "ascend"
    assert node_parameters({**job, "run_id": "n20261129"}, "0b5e2c4e", launch)["run_id"] == "n20261129"


@pytest.mark.parametrize("value", [
    None,  # not started by the template
    '{"launch": {"launch.backend": "msrun", "launch.nodes": 2, "launch.node_rank": $(SKNET_NODE_RANK)}, "npus": 8}',
    '{"launch": {"launch.backend": "ascend", "launch.nodes": 2, "launch.node_rank": 0}, "npus": 8}',
    '{"launch": {"launch.backend": "msrun", "launch.nodes": 2, "launch.node_rank": 0}}',
])
def test_a_pod_without_its_node_settings_is_refused_before_any_work(value):
    from infra.ascend.k8s_node import NodeError, node_launch

    with pytest.raises(NodeError, match="SKNET_NODE"):
        node_launch({} if value is None else {"SKNET_NODE": value})


@pytest.mark.parametrize("values, message", [
    ({"nodes": 1}, "less than the minimum of 2"),  # one server: the single-server template
    ({"nodes": "two"}, "is not of type 'integer'"),
])
def test_job_variables_a_multi_server_job_cannot_run_with_are_refused(values, message):
    import jsonschema  # what the Prefect server checks job variables with, when a flow run is created

    schema = json.loads((REPO / "infra" / "k8s" / "multi-server-job-template.json").read_text())["variables"]
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.validate(values, schema)


def base_image(**build_args: str) -> str:
    """The image the Dockerfile's FROM resolves to, as Docker resolves the ARGs declared before it."""
    text = DOCKERFILE.read_text()
    values: dict[str, str] = {}
    for name, default in re.findall(r"^ARG (\w+)=(\S*)$", text[:text.index("\nFROM ")], flags=re.M):
        values[name] = build_args.get(name, re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], default))
    (argument,) = re.findall(r"^FROM \$\{(\w+)\}$", text, flags=re.M)
    return values[argument]


def accepted_by_mindspore() -> list[str]:
    from mindspore.run_check._check_version import AscendEnvChecker

    return AscendEnvChecker(None).version  # the installed wheel's list, e.g. ["8.2", "8.3", "8.5", "9.0", "9.1"]


def install_cann(root: Path, version: str, monkeypatch) -> None:
    """A CANN as MindSpore finds it: $ASCEND_HOME_PATH/compiler/version.info with its Version= line."""
    (root / "compiler").mkdir(parents=True)
    (root / "compiler" / "version.info").write_text(f"Version={version}\nversion_dir=cann-{version}\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(root))


@pytest.mark.parametrize("chip", CHIPS)
def test_each_chip_builds_on_its_official_cann_image_with_a_cann_mindspore_accepts(chip):
    image = base_image(CHIP=chip)
    # the official tags: <cann-version>-<chip>-<os><os-version>-<py-version>, lower case
    match = re.fullmatch(rf"ascendai/cann:(\d+)\.(\d+)\.\d+-{chip}-ubuntu22\.04-py(\d+\.\d+)", image)
    assert match, f"CHIP={chip}: {image}"
    assert f"{match[1]}.{match[2]}" in accepted_by_mindspore()
    assert match[3] == f"{sys.version_info.major}.{sys.version_info.minor}"  # the Python the wheel is tested on
    assert base_image(CHIP=chip, CANN_REPO="quay.io/ascend/cann") == image.replace("ascendai/", "quay.io/ascend/")


def test_the_cann_is_the_one_mindspore_compiled_its_custom_operators_with(tmp_path, monkeypatch):
    from mindspore.run_check._check_version import AscendEnvChecker

    install_cann(tmp_path, re.search(r":([\d.]+)-", base_image())[1], monkeypatch)
    # on another CANN, MindSpore turns its fused overflow check (AllFinite) off under loss scaling
    assert AscendEnvChecker(None).check_custom_version()


@pytest.mark.parametrize("installed", ["8.1.RC1", "9.1.0"])
def test_the_image_build_fails_on_a_cann_mindspore_does_not_accept(tmp_path, monkeypatch, capsys, installed):
    from infra.ascend.check_cann import main

    install_cann(tmp_path, installed, monkeypatch)
    accepted = installed[:3] in accepted_by_mindspore()
    assert main() == (0 if accepted else 1)  # the Dockerfile's RUN fails on 1
    if not accepted:
        expected = re.escape(", ".join(accepted_by_mindspore()))
        assert re.search(rf"CANN 8\.1 .* not accepted by MindSpore .* one of {expected}", capsys.readouterr().err)
    text = DOCKERFILE.read_text()
    assert text.index("python3 infra/ascend/check_cann.py") > text.index('"mindspore==2.10.*"')


def test_an_image_without_a_cann_fails_the_check(monkeypatch):
    from infra.ascend.check_cann import CannRejected, accepted_cann

    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    with pytest.raises(CannRejected, match="ASCEND_HOME_PATH"):
        accepted_cann()


@pytest.mark.parametrize("chip, builds", [("910", True), ("910b", True), ("310p", False), ("", False)])
def test_only_the_two_chips_the_image_serves_build(chip, builds):
    text = DOCKERFILE.read_text()
    assert text.index("\nARG CHIP\n") > text.index("\nFROM ")  # the RUN below sees the build argument
    script = re.search(r'^RUN (case "\$\{CHIP\}" in.*?esac)$', text, flags=re.M | re.S)[1].replace("\\\n", "")
    proc = subprocess.run(["bash", "-c", script], env={"CHIP": chip}, capture_output=True, text=True)
    assert (proc.returncode == 0) == builds, proc.stderr


def test_the_docs_and_templates_name_the_images_the_dockerfile_builds():
    cann = re.search(r":([\d.]+)-", base_image())[1]
    template = json.loads((REPO / "infra" / "k8s" / "base-job-template.json").read_text())
    texts = {name: (REPO / name).read_text() for name in ("README.md", "infra/README.md")}
    texts["base-job-template.json"] = template["variables"]["properties"]["image"]["description"]
    for name, text in texts.items():
        assert cann in text and "CHIP=910" in text and "CHIP=910b" in text, name
        assert "8.1.rc1" not in text.lower(), name  # the CANN MindSpore 2.10 refuses
