"""Issue #11, "two servers, for real": two network namespaces joined by a veth pair stand for two hosts, and
one `sknet launch` in each runs as a node of ONE msrun job on CPU.

The namespaces are needed: msrun starts the scheduler on the node whose local addresses include
master_addr, so two nodes on one loopback would both start one. Here only node 0 has 10.213.N.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from test_launch import processes_running

pytestmark = pytest.mark.slow

MASTER_PORT = 8118  # any port: each namespace has its own network stack
NODE_TIMEOUT = 600  # seconds a `sknet launch` may take before the test gives up on it
FIRST_STEP_TIMEOUT = 300
ABORT_WITHIN = 120  # seconds node 0 may take to end after node 1's rank died (msrun notices after ~35 s)
VENV_BIN = Path(sys.executable).parent


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=10)


class TwoHosts:
    """Two namespaces `sknet-<suffix>-0/1` with 10.213.N.1 and .2 on the two ends of a veth pair."""

    def __init__(self, root: Path):
        self.root = root  # every process of the job has it in its command line
        self.suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.namespaces = [f"sknet-{self.suffix}-{k}" for k in (0, 1)]
        subnet = f"10.213.{os.getpid() % 250 + 1}"
        self.addresses = [f"{subnet}.1", f"{subnet}.2"]
        self.created: list[str] = []
        self.nodes: list[subprocess.Popen | None] = [None, None]

    def create(self) -> None:
        for name in self.namespaces:
            made = _ip("netns", "add", name)
            if made.returncode != 0:
                if not self.created:
                    pytest.skip(f"`ip netns add` does not work here: {made.stderr.strip()}")
                raise AssertionError(f"ip netns add {name}: {made.stderr}")
            self.created.append(name)
        a, b = self.namespaces
        # both ends are born inside their namespace: the host's interfaces are never touched
        commands = [("link", "add", "name", "sk0", "netns", a, "type", "veth", "peer", "name", "sk1", "netns", b)]
        for k, (ns, dev) in enumerate(zip(self.namespaces, ("sk0", "sk1"), strict=True)):
            commands += [("-n", ns, "addr", "add", f"{self.addresses[k]}/24", "dev", dev),
                         ("-n", ns, "link", "set", dev, "up"), ("-n", ns, "link", "set", "lo", "up")]
        for command in commands:
            done = _ip(*command)
            assert done.returncode == 0, f"ip {' '.join(command)}: {done.stderr}"

    def output_dir(self, k: int) -> Path:
        return self.root / f"node-{k}"

    def start(self, k: int, data: Path, *overrides: str) -> subprocess.Popen:
        """`sknet launch` of node `k` in its namespace; stdout/stderr go to node-K.out/.err."""
        command = [
            "ip", "netns", "exec", self.namespaces[k], sys.executable, "-m", "sknet", "launch", "--config",
            "cpu-smoke", "--set", f"data.uri={data}", f"train.output_dir={self.output_dir(k)}",
            "launch.backend=msrun", "launch.nodes=2", "launch.ranks=2", f"launch.node_rank={k}",
            f"launch.master_addr={self.addresses[0]}", f"launch.master_port={MASTER_PORT}",
            "launch.timeout_minutes=10", *overrides,
        ]
        env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "GLOG_v": "3"}
        with open(self.root / f"node-{k}.out", "w") as out, open(self.root / f"node-{k}.err", "w") as err:
            self.nodes[k] = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=self.root)
        return self.nodes[k]

    def stdout(self, k: int) -> str:
        return (self.root / f"node-{k}.out").read_text()

    def stderr(self, k: int) -> str:
        return (self.root / f"node-{k}.err").read_text(errors="replace")

    def wait(self, k: int, timeout: float = NODE_TIMEOUT) -> int:
        return self.nodes[k].wait(timeout)

    def launch_json(self, k: int) -> dict:
        return json.loads((self.output_dir(k) / "launch.json").read_text())

    def leftovers(self) -> list[psutil.Process]:
        return processes_running(str(self.root))

    def destroy(self) -> None:
        for node in self.nodes:
            if node is not None and node.poll() is None:
                node.send_signal(signal.SIGKILL)
                node.wait()
        kill_all(self.leftovers())  # msrun, its scheduler and workers run in sessions of their own
        for name in self.created:  # takes the veth pair with it
            _ip("netns", "del", name)


@pytest.fixture
def hosts(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed: no `ip netns`")
    hosts = TwoHosts(tmp_path)
    try:
        hosts.create()
        yield hosts
    finally:
        hosts.destroy()


def test_two_nodes_train_one_model(hosts, synthetic_data):
    started = time.monotonic()
    for k in (0, 1):
        hosts.start(k, synthetic_data, "train.epochs=1")
    codes = [hosts.wait(k) for k in (0, 1)]
    seconds = time.monotonic() - started
    assert codes == [0, 0], \
        f"exit codes {codes}\nnode 0:\n{hosts.stderr(0)[-3000:]}\nnode 1:\n{hosts.stderr(1)[-3000:]}"

    for k in (0, 1):
        printed, written = json.loads(hosts.stdout(k)), hosts.launch_json(k)
        for result in (printed, written):
            assert result["ok"] and result["local_ranks"] == [k] and result["exit_codes"] == {"msrun": 0}
            assert result["ranks"] == 2 and result["failed_rank"] is None and result["reason"] == ""
    zero, one = hosts.output_dir(0), hosts.output_dir(1)
    ranks = [json.loads((zero / "rank-0.json").read_text()), json.loads((one / "rank-1.json").read_text())]
    assert not (zero / "rank-1.json").exists() and not (one / "rank-0.json").exists()  # each node ran its own rank
    assert [(r["rank"], r["ranks"]) for r in ranks] == [(0, 2), (1, 2)]
    assert [(r["shard_id"], r["num_shards"]) for r in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 10  # 640 samples / 2 shards / batch 32
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]  # one model: the all-reduce crossed the veth
    assert sorted(p.name for p in (zero / "checkpoints").glob("step-*.ckpt")) == ["step-00000010.ckpt"]
    assert not list(one.rglob("*.ckpt"))
    # msrun started the scheduler on node 0 only: master_addr is local there and nowhere else
    assert (zero / "logs" / "scheduler.log").exists() and not (one / "logs" / "scheduler.log").exists()
    assert "step 10/10" in hosts.stderr(1) and "[rank 1] " in hosts.stderr(1)
    assert not hosts.leftovers()
    print(f"two nodes trained one epoch in {seconds:.0f} s")


def test_a_rank_killed_on_one_node_ends_the_other_node(hosts, synthetic_data):
    overrides = ("train.epochs=3", "train.log_every_steps=1")  # 30 steps: time to kill a rank mid-run
    for k in (0, 1):
        hosts.start(k, synthetic_data, *overrides)
    worker_log = hosts.output_dir(0) / "logs" / "worker_0.log"
    deadline = time.monotonic() + FIRST_STEP_TIMEOUT
    while not (worker_log.exists() and "step 2/30" in worker_log.read_text(errors="replace")):
        ended = [k for k in (0, 1) if hosts.nodes[k].poll() is not None]
        assert not ended, f"node(s) {ended} ended before training:\n{hosts.stderr(ended[0])[-3000:]}"
        assert time.monotonic() < deadline, f"node 0 logged no step 2 within {FIRST_STEP_TIMEOUT} s"
        time.sleep(0.2)

    config = str(hosts.output_dir(1) / "config.yaml")  # in the command line of msrun, its workers (and scheduler)
    victims = [p for p in processes_running(config) if p.environ().get("MS_ROLE") == "MS_WORKER"]
    assert len(victims) == 1, [p.cmdline() for p in processes_running(config)]
    victim = victims[0]
    assert victim.environ().get("RANK_ID") == "1"
    victim.kill()
    killed_at = time.monotonic()

    # node 1's msrun sees its worker die at once
    assert hosts.wait(1, timeout=60) == 2
    assert f"Worker process {victim.pid} exit with exception. Error code: -9." in hosts.stderr(1)
    assert hosts.launch_json(1)["local_ranks"] == [1] and hosts.launch_json(1)["exit_codes"] == {"msrun": 1}

    # node 0 only learns it from the scheduler's heartbeat timeout (~30 s), then msrun ends its worker
    code = hosts.wait(0, timeout=ABORT_WITHIN)
    took = time.monotonic() - killed_at
    err = hosts.stderr(0)
    assert code == 2, err[-3000:]
    assert took < ABORT_WITHIN
    # what MindSpore's scheduler (on node 0) says, relayed by msrun
    assert "The node: 1 is timed out" in err
    assert "worker 1 is the first one timed out" in err
    assert "sknet: error: rank 1 failed (msrun: rank msrun exited with code" in err  # the failed rank named
    result = hosts.launch_json(0)
    assert not result["ok"] and result["local_ranks"] == [0] and set(result["exit_codes"]) == {"msrun"}
    assert result["failed_rank"] == "1" and result["reason"].startswith("rank 1 failed (msrun: ")
    assert any("Distributed job exited with exception" in line for line in result["last_lines"])
    assert not list(hosts.output_dir(0).glob("rank-*.json"))  # no rank finished

    deadline = time.monotonic() + 10
    while (left := hosts.leftovers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [p.cmdline() for p in left]
    print(f"node 0 ended {took:.0f} s after node 1's rank was killed")
