"""The operations files parse and say what they must: deployments, Ascend image, worker script, k8s template."""

import inspect
import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from flows.sknet_train import sknet_train
from sknet.config import load_config

REPO = Path(__file__).resolve().parent.parent


def deployments() -> dict[str, dict]:
    document = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    return {d["name"]: d for d in document["deployments"]}


def test_nightly_runs_on_a_cron_with_an_explicit_timezone_one_at_a_time():
    nightly = deployments()["nightly"]
    (schedule,) = nightly["schedules"]
    assert len(schedule["cron"].split()) == 5 and schedule["timezone"] == "Asia/Shanghai"
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert nightly["work_pool"]["name"] == "sknet-process"
    assert load_config(nightly["parameters"]["config"]).launch.backend == "ascend"


def test_every_deployment_points_at_a_flow_with_parameters_it_accepts():
    from flows.sknet_stage import sknet_stage

    flows = {"sknet_train": sknet_train, "sknet_stage": sknet_stage}
    for name, deployment in deployments().items():
        path, function = deployment["entrypoint"].split(":")
        assert (REPO / path).is_file() and function in flows, name
        accepted = set(inspect.signature(flows[function].fn).parameters)
        assert set(deployment["parameters"]) <= accepted, name
        for trigger in deployment.get("triggers", []):
            assert set(trigger["parameters"]) <= accepted, name
        if function == "sknet_train":
            load_config(deployment["parameters"]["config"])  # a shipped profile
    assert load_config(deployments()["smoke"]["parameters"]["config"]).train.device_target == "CPU"
    assert deployments()["manual"]["entrypoint"] == "flows/sknet_stage.py:sknet_stage"


def test_both_training_deployments_retrain_on_a_newly_staged_dataset_and_only_nightly_is_on_by_default():
    from flows.sknet_stage import STAGED_EVENT

    triggers = {name: deployments()[name]["triggers"] for name in ("nightly", "smoke")}
    for name, (trigger,) in triggers.items():
        assert trigger["expect"] == [STAGED_EVENT] and trigger["name"] == f"sknet-train/{name} on a new dataset"
        assert trigger["parameters"] == {"dataset_uri": "{{ event.resource.id }}"}  # the staged URI
    assert triggers["nightly"][0]["enabled"] is True and triggers["smoke"][0]["enabled"] is False


def test_no_secret_is_written_into_the_deployments():
    text = (REPO / "deployments" / "prefect.yaml").read_text()
    values = re.findall(r":\s*(\S.*)$", text, flags=re.M)
    assert not [v for v in values if re.search(r"AKIA[0-9A-Z]{16}|aws_secret|password", v, flags=re.I)]


def test_the_ascend_image_installs_what_the_project_needs_from_files_that_exist():
    dockerfile = (REPO / "infra" / "ascend" / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, flags=re.M)
    assert re.search(r"^ARG BASE_IMAGE=\S+py3\.11$", dockerfile, flags=re.M)
    assert '"numpy>=1.26,<2"' in dockerfile and '"mindspore==2.10.*"' in dockerfile
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M):
        for name in source.split():
            assert (REPO / name).exists(), f"COPY {name}: not in the repository"


def test_the_worker_script_mounts_devices_driver_and_hccn_conf():
    script = REPO / "infra" / "ascend" / "run-worker.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for mount in ("/etc/hccn.conf:/etc/hccn.conf", "/usr/local/Ascend/driver:", "/dev/davinci_manager"):
        assert mount in text


def test_the_worker_script_refuses_a_host_without_hccn_conf():
    if Path("/etc/hccn.conf").exists():
        return  # an Ascend host: the check below is about machines without one
    proc = subprocess.run(["bash", str(REPO / "infra" / "ascend" / "run-worker.sh"), "img"], capture_output=True,
                          text=True, env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:1/api"})
    assert proc.returncode == 2 and "/etc/hccn.conf not found" in proc.stderr


def k8s_template() -> dict:
    return json.loads((REPO / "infra" / "k8s" / "base-job-template.json").read_text())


def test_the_k8s_template_requests_ascend_devices_and_mounts_the_host_driver():
    manifest = k8s_template()["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == "{{ ascend_devices }}"
    assert container["resources"]["requests"]["huawei.com/Ascend910"] == "{{ ascend_devices }}"
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/hccn.conf", "/usr/local/Ascend/driver", "/dev/shm"} <= mounted
    assert {m["name"] for m in container["volumeMounts"]} == {v["name"] for v in pod["volumes"]}
    assert pod["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0  # Prefect retries, not k8s


def test_every_placeholder_of_the_k8s_template_is_a_declared_variable_with_a_valid_default():
    template = k8s_template()
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    declared = template["variables"]["properties"]
    assert used <= set(declared), used - set(declared)
    types = {"string": str, "integer": int, "boolean": bool, "object": dict, "array": list}
    for name, spec in declared.items():
        if "default" in spec:
            assert isinstance(spec["default"], types[spec["type"]]), name
    assert declared["ascend_devices"]["default"] == load_config("cifar10-ascend8").launch.ranks


def test_a_credentials_block_without_prefect_aws_is_a_clear_error():
    import importlib.util

    import pytest

    from sknet.errors import ConfigError
    from tasks._support import use_aws_credentials_block

    if importlib.util.find_spec("prefect_aws") is not None:
        pytest.skip("prefect-aws is installed here")
    with pytest.raises(ConfigError, match=r"aws_credentials_block='nightly-bucket'.*pip install prefect-aws"):
        use_aws_credentials_block("nightly-bucket")


def sleeper(*argv: str, **popen) -> subprocess.Popen:
    """A process sleeping 60 s with `argv` on its command line, returned once it runs that command (not the fork
    of this one: /proc shows our command line and environment until then)."""
    import sys

    process = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(60)", *argv],
                               stdout=subprocess.PIPE, **popen)
    process.stdout.readline()
    return process


def test_make_down_never_signals_a_process_that_is_not_its_own(tmp_path):
    from infra.stack import Stack

    stranger = sleeper()  # e.g. a PID reused after a reboot
    try:
        for name in ("worker.pid", "server.pid"):  # `prefect server stop` alone would TERM it
            (tmp_path / name).write_text(str(stranger.pid))
        Stack(tmp_path).down(timeout=1)
        assert stranger.poll() is None
        assert not (tmp_path / "worker.pid").exists() and not (tmp_path / "server.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_make_down_never_signals_a_reused_worker_pid_even_of_a_prefect_process(tmp_path):
    from infra.stack import Stack, _started

    stranger = sleeper("prefect", "worker", start_new_session=True)  # as the stack starts its worker
    try:
        (tmp_path / "worker.pid").write_text(f"{stranger.pid} {int(_started(stranger.pid)) - 1}\n")  # not this one
        Stack(tmp_path).down(timeout=1)
        assert stranger.poll() is None
        (tmp_path / "worker.pid").write_text(f"{stranger.pid} {_started(stranger.pid)}\n")  # this one
        Stack(tmp_path).down(timeout=5)
        assert stranger.wait(10) is not None
    finally:
        stranger.kill()
        stranger.wait()


def test_make_down_stops_only_a_prefect_server_of_its_own_prefect_home(tmp_path):
    from infra.stack import Stack

    def server(home: Path) -> subprocess.Popen:  # what `prefect server start --background` runs, in PREFECT_HOME
        return sleeper("prefect.server.api.server", env={**os.environ, "PREFECT_HOME": str(home)})

    others, ours = server(tmp_path / "elsewhere"), server(tmp_path)
    try:
        (tmp_path / "server.pid").write_text(str(others.pid))
        Stack(tmp_path).down(timeout=1)
        assert others.poll() is None and not (tmp_path / "server.pid").exists()
        (tmp_path / "server.pid").write_text(str(ours.pid))
        Stack(tmp_path).down(timeout=5)
        assert ours.wait(10) is not None and not (tmp_path / "server.pid").exists()
    finally:
        for process in (others, ours):
            process.kill()
            process.wait()


def test_the_stack_runs_prefects_background_server_in_its_own_session_reuses_it_and_down_stops_it(tmp_path):
    from infra.stack import Stack, _alive
    from sknet.ports import free_port

    stack = Stack(tmp_path / "prefect", free_port())
    stack.home.mkdir()
    (stack.home / "server.pid").write_text("999999999")  # left by a server that died: Prefect would refuse to start
    try:
        stack.start_server()
        pid = int((stack.home / "server.pid").read_text())
        assert stack.healthy() and os.getsid(pid) != os.getsid(0)  # not in our session: ^C here does not reach it
        stack.start_server()
        assert int((stack.home / "server.pid").read_text()) == pid
    finally:
        stack.down()
    assert not stack.healthy() and not _alive(pid) and not (stack.home / "server.pid").exists()


def test_a_server_that_dies_during_start_up_is_an_error_naming_its_log(tmp_path):
    import pytest

    from infra.stack import Stack
    from sknet.ports import free_port

    stack = Stack(tmp_path / "prefect", free_port())
    (stack.home / "prefect.db").mkdir(parents=True)  # the server cannot open its database
    try:
        with pytest.raises(RuntimeError, match=f"port {stack.port} exited during start-up; see .*server.log"):
            stack.start_server(timeout=120)
    finally:
        stack.down()  # also if it came up after all (the regression this test is for)
    assert "unable to open database file" in (stack.home / "server.log").read_text()


def test_the_ranks_stop_grace_fits_inside_the_k8s_termination_grace_period():
    pod_grace = k8s_template()["variables"]["properties"]["termination_grace_period_seconds"]["default"]
    assert load_config("cifar10-ascend8").launch.stop_grace_seconds < pod_grace


def test_the_stacks_work_dir_is_where_its_deployments_keep_runs_and_the_dataset_cache(tmp_path):
    """`python -m infra.stack up --work DIR`: the sknet-train deployments get DIR as their work_dir (run
    directories, dataset cache), as the stack's home is <DIR>/prefect; the checkout's work/ stays untouched."""
    import sys
    import urllib.request

    from conftest import copy_of_repo
    from infra.stack import Stack
    from sknet.ports import free_port

    clone, work, port = copy_of_repo(tmp_path / "sknet-pipeline"), tmp_path / "elsewhere", free_port()
    env = {**os.environ, "SKNET_PUBLISH_TO": f"file://{tmp_path / 'store'}", "SKNET_NOTIFY_URL": "",
           "SKNET_DATASET_URI": f"file://{tmp_path / 'store'}/datasets/cifar10/{'0' * 64}"}
    try:
        up = subprocess.run([sys.executable, "-m", "infra.stack", "up", "--work", str(work), "--port", str(port)],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, (up.stdout + up.stderr)[-4000:]
        for name in ("nightly", "smoke"):
            url = f"http://127.0.0.1:{port}/api/deployments/name/sknet-train/{name}"
            with urllib.request.urlopen(url, timeout=30) as response:
                assert json.loads(response.read())["parameters"]["work_dir"] == str(work), name
        assert (work / "prefect" / "stack.json").is_file() and not (clone / "work").exists()
    finally:
        Stack(work / "prefect", port).down()
