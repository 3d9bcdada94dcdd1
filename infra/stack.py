"""The local stack: Prefect server on 127.0.0.1 (own PREFECT_HOME), a process work pool, the deployments
from `deployments/prefect.yaml`, and a worker that stops on SIGTERM.

    python -m infra.stack up      # or `make up`;   prints the UI URL and what to run next
    python -m infra.stack status
    python -m infra.stack down    # or `make down`; stops the worker, then the server

The server is Prefect's background server (`prefect server start --background`, `prefect server stop`; PID
in `server.pid`, log in `server.log` through `server-logging.yml`); the worker, which Prefect cannot background,
runs in its own session (PID and start time in `worker.pid`, log in `worker.log`); all in the stack's home
(default `work/prefect`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.stack_record import api_healthy, recorded_port, write_record

REPO = Path(__file__).resolve().parent.parent
POOL = "sknet-process"
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
SERVER_LOGGING = Path(__file__).resolve().parent / "server-logging.yml"  # the server's log: <home>/server.log
SERVER_PID = "server.pid"  # written by `prefect server start --background`, read by `prefect server stop`
WORKER_PID = "worker.pid"  # ours: "<pid> <start time>"


@dataclass
class Stack:
    home: Path
    port: int = 4200
    pool: str = POOL

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of every prefect command against this stack (the venv's bin first on PATH)."""
        return {
            **os.environ, "PWD": str(REPO), "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_PROMPT": "false",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(extra or {}),
        }

    def prefect(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300,
                check: bool = True, own_session: bool = False) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=self.env(extra_env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              start_new_session=own_session)
        if check and proc.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                               f"{proc.stderr[-3000:]}")
        return proc

    def healthy(self) -> bool:
        return api_healthy(self.api_url)

    def start_server(self, timeout: float = 180) -> None:
        """Prefect's background server, in its own session (a healthy server on the port is reused)."""
        if self.healthy():
            return
        pid = self._server_pid()
        if pid is None:  # a PID file left by a server that died would make Prefect refuse to start
            self.home.mkdir(parents=True, exist_ok=True)
            (self.home / SERVER_PID).unlink(missing_ok=True)
            self.prefect("server", "start", "--background", "--host", "127.0.0.1", "--port", str(self.port),
                         extra_env={"PREFECT_LOGGING_SETTINGS_PATH": str(SERVER_LOGGING)}, own_session=True)
            pid = self._server_pid()
        deadline = time.monotonic() + timeout  # Prefect returns at once: its server may yet fail to start
        while not self.healthy():
            if not _alive(pid):
                raise RuntimeError(f"prefect server on port {self.port} exited during start-up; "
                                   f"see {self.home / 'server.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server on port {self.port} not healthy after {timeout:.0f} s; "
                                   f"see {self.home / 'server.log'}")
            time.sleep(1)

    def create_pool(self) -> None:
        if self.prefect("work-pool", "inspect", self.pool, check=False).returncode != 0:
            self.prefect("work-pool", "create", self.pool, "--type", "process")

    def deploy(self, extra_env: dict[str, str] | None = None) -> str:
        """Apply every deployment in deployments/prefect.yaml (env values are read now, from extra_env)."""
        return self.prefect("deploy", "--all", "--prefect-file", str(PREFECT_FILE), extra_env=extra_env).stdout

    def pause_schedules(self, deployment: str) -> list[str]:
        listing = self.prefect("deployment", "schedule", "ls", deployment).stdout
        ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", listing)
        for schedule_id in ids:
            self.prefect("deployment", "schedule", "pause", deployment, schedule_id)
        return ids

    def switch_new_dataset_trigger(self, *, off: str, on: str) -> None:
        """Pause deployment `off`'s trigger on a newly staged dataset and resume `on`'s (prefect.yaml names them)."""
        self.prefect("automation", "pause", f"{off} on a new dataset")
        self.prefect("automation", "resume", f"{on} on a new dataset")

    def start_worker(self, extra_env: dict[str, str] | None = None) -> int:
        """A worker in its own session (not a child of your shell, so TERM reaches it), logging to worker.log."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "worker.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, "--type", "process"],
                cwd=REPO, env=self.env(extra_env), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        (self.home / WORKER_PID).write_text(f"{process.pid} {_started(process.pid)}\n")
        return process.pid

    def up(self, extra_env: dict[str, str] | None = None, pause_nightly: bool = True) -> None:
        self.start_server()
        self.create_pool()
        self.deploy(extra_env)
        if pause_nightly:  # a laptop has no Ascend devices: run `nightly` by hand with the smoke profile
            self.pause_schedules("sknet-train/nightly")
            self.switch_new_dataset_trigger(off="sknet-train/nightly", on="sknet-train/smoke")
        if not _ours(self._worker_pid()):
            self.start_worker(extra_env)
        write_record(self.home, self.api_url, self.pool)

    def worker_running(self) -> bool:
        """Whether the worker this stack started is still running."""
        return _ours(self._worker_pid())

    def _worker_pid(self) -> int | None:
        """The PID in `worker.pid` if that process is still the one we started (same start time), else None."""
        path = self.home / WORKER_PID
        if not path.exists():
            return None
        pid, _, started = path.read_text().strip().partition(" ")
        if started and _started(int(pid)) != started:
            return None  # the PID was reused by another process since (e.g. after a reboot)
        return int(pid)

    def _server_pid(self) -> int | None:
        """The PID in Prefect's `server.pid` if it is a running Prefect server of this PREFECT_HOME, else None
        (`prefect server stop` would signal whatever process has that PID now)."""
        try:
            pid = int((self.home / SERVER_PID).read_text())
            ours = (b"prefect.server.api.server" in Path(f"/proc/{pid}/cmdline").read_bytes() and
                    f"PREFECT_HOME={self.home}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            return None
        return pid if ours and _alive(pid) else None

    def down(self, timeout: float = 30) -> None:
        """TERM the worker's process group, then `prefect server stop`; KILL what outlives `timeout`."""
        if _ours(worker := self._worker_pid()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker, signal.SIGTERM)
                _kill_after(worker, timeout, os.killpg)
        if (server := self._server_pid()) is not None:
            self.prefect("server", "stop")  # sends TERM and returns
            _kill_after(server, timeout, os.kill)
        for name in (WORKER_PID, SERVER_PID):
            (self.home / name).unlink(missing_ok=True)


def _ours(pid: int | None) -> bool:
    """A running prefect process (a PID file that outlived a reboot may name someone else's process)."""
    try:
        return _alive(pid) and b"prefect" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _started(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the PID, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie of ours is not alive
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def _kill_after(pid: int, timeout: float, kill) -> None:
    """Wait up to `timeout` for a signalled process to exit, then `kill(pid, SIGKILL)`."""
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """--work, --home and --port: where a local stack lives (read back by `stack_from`)."""
    parser.add_argument("--work", type=Path, default=REPO / "work",
                        help="work dir (default work/): `make run`'s, whose embedded store `up` deploys against, "
                             "and the deployments' work_dir (run directories, dataset cache)")
    parser.add_argument("--home", type=Path, default=None,
                        help="PREFECT_HOME of the stack: database, logs, PIDs (default: <work>/prefect)")
    parser.add_argument("--port", type=int, default=None,
                        help="API/UI port on 127.0.0.1 (default $SKNET_PREFECT_PORT, else 4200; `status` and `down` "
                             "take the running stack's own from its stack.json)")


def stack_from(args: argparse.Namespace, pool: str = POOL, *, recorded: bool = False) -> Stack:
    """The stack of `args`; with `recorded`, on the port its record (`stack.json`) gives when no --port is given
    (`status` and `down` of a stack started on another port find it)."""
    home = (args.home or args.work.resolve() / "prefect").resolve()
    port = args.port
    if port is None and recorded:
        port = recorded_port(home)
    if port is None:
        port = int(os.environ.get("SKNET_PREFECT_PORT", 4200))
    return Stack(home, port, pool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status"])
    add_stack_arguments(parser)
    parser.add_argument("--pool", default=POOL, help=f"process work pool (default {POOL})")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    stack = stack_from(args, args.pool, recorded=args.command in ("status", "down"))
    if args.command == "down":
        stack.down()
        print("local stack stopped")
        return 0
    if args.command == "status":
        print(json.dumps({"api": stack.api_url, "healthy": stack.healthy(),
                          "worker_running": stack.worker_running()}))
        return 0
    from infra.run_local import run_holding_work_dir

    return run_holding_work_dir("make up", work, "python -m infra.stack up --work DIR", lambda: _up(stack, work))


def quiet_http_logs() -> None:
    """The Prefect client's HTTP requests stay out of `make up`'s output: httpx logs each at INFO, among them the
    client's CSRF-token probe that a server without CSRF protection answers 422 and a block looked up before it
    exists (404) — expected answers that read like failures."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _up(stack: Stack, work: Path) -> int:
    """Stage the embedded default dataset unless SKNET_PUBLISH_TO names a store, then bring the stack up, its
    deployments' work_dir `work` (with the failure notification when SKNET_NOTIFY_URL is set)."""
    from infra import notify

    quiet_http_logs()
    notify_url = os.environ.get("SKNET_NOTIFY_URL", "")
    try:
        notify.check_url(notify_url)  # before anything starts
    except ValueError as error:
        print(f"make up: error: {error}", file=sys.stderr)
        return 2
    # prefect.yaml appends /datasets/* to the store for its trigger's match: no trailing slash
    deploy_env = {"SKNET_PUBLISH_TO": os.environ.get("SKNET_PUBLISH_TO", "").rstrip("/"),
                  "SKNET_DATASET_URI": os.environ.get("SKNET_DATASET_URI", ""), "SKNET_WORK_DIR": str(work)}
    if not deploy_env["SKNET_PUBLISH_TO"]:  # the embedded default, as `make run` uses it
        from infra.run_local import embedded_dataset

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        store = work / "store"
        deploy_env["SKNET_PUBLISH_TO"] = f"file://{store}"
        deploy_env["SKNET_DATASET_URI"] = deploy_env["SKNET_DATASET_URI"] or embedded_dataset(
            "auto", store, work)["uri"]
    stack.up(deploy_env)
    notifications = notify.apply_to(stack.api_url, notify_url)
    print(f"Prefect UI: {stack.ui_url}   (API {stack.api_url}; logs in {stack.home})")
    print(f"failure notifications: {'webhook (SKNET_NOTIFY_URL)' if notifications else 'off (set SKNET_NOTIFY_URL)'}")
    print(f"deployments publish to {deploy_env['SKNET_PUBLISH_TO']}, train on {deploy_env['SKNET_DATASET_URI']}, "
          f"keep run directories and the dataset cache in {work}")
    print("next:  source .venv/bin/activate   (the venv's prefect and sknet)")
    print(f"       export PREFECT_API_URL={stack.api_url}")
    print("       prefect deployment run sknet-train/smoke --watch")
    print("       prefect deployment run sknet-train/nightly --param config=cpu-smoke --watch")
    print("       make stage SOURCE=<layout dir|tarball|URL>   (a new dataset starts sknet-train/smoke on it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
