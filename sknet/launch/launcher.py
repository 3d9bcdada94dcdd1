"""Start and supervise the ranks of one training run.

Backends (`launch.backend`):
- `cpu`: MindSpore's dynamic cluster on this host (the mechanism behind msrun): one scheduler process
  plus one worker per rank, CPU collectives over `mccl` (one rank alone: no scheduler, no group). We spawn
  them ourselves so that every rank is our child: its exit code, its output and its process group are ours to
  watch and to stop.
- `ascend`: one process per NPU with DEVICE_ID (logical), RANK_ID, RANK_SIZE and RANK_TABLE_FILE (HCCL).
  `ascend` and `msrun` ranks get HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT unless already set (see `ranks`).
- `msrun`: MindSpore's own launcher, for one or several nodes; per-rank output is followed in its
  `worker_N.log` files, and a failed rank is reported by msrun's exit (after its own ~35 s wait).

Every line a rank prints goes to `<output_dir>/logs/rank-N.log` and, prefixed `[rank N]`, to a
callback. The first rank to fail, the wall-clock timeout, or a stall (no rank logged a step for
`launch.stall_timeout_seconds`, see `sknet.launch.stall`) stops all ranks (TERM, then KILL, per process group).
A relaunch of the same run resumes from its newest checkpoint (see `sknet.training.loop`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sknet.config import Config
from sknet.errors import LaunchError
from sknet.jsonio import dumps
from sknet.launch.admission import Admission, admit
from sknet.launch.processes import (
    STOP_GRACE_SECONDS,
    LogTail,
    SigtermWatch,
    Supervised,
    retire_worker_logs,
    stop_all,
)
from sknet.launch.ranks import MSRUN, SCHEDULER, RankProcess, plan_processes
from sknet.launch.stall import StallWatch
from sknet.ports import free_port
from sknet.run_files import CONFIG_FILE, LAUNCH_FILE, LOGS_DIR, rank_log_file
from sknet.storage import REDACTED, redact_url
from sknet.training.checkpoint import checkpoint_dir
from sknet.training.run_record import check_run_dir, dataset_digest
from sknet.training.stopping import DIVERGED_EXIT_CODE, DIVERGED_MARKER, LAUNCHED_ENV, launcher_identity

log = logging.getLogger(__name__)

BAD_INPUT_EXIT_CODE = 2  # `sknet` exits so on an SknetError (sknet.cli.main): in a rank, a ConfigError or DataError


BAD_INPUT_REASON = ": bad input (a ConfigError or DataError, named in its last lines); a retry would fail the same way"


DRY_RUN_INHERITED = ("AWS_", "MS_", "HCCL_", "ASCEND_", "RANK_", "DEVICE_", "GLOG_")


SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|CREDENTIAL|ACCESS_KEY", re.IGNORECASE)


URL_IN_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,;]+")


USERINFO = re.compile(r"^([^:/]+://)[^/?#@]*@")


__all__ = ["LaunchError", "LaunchResult", "launch", "check_launchable", "dry_run"]


@dataclass
class LaunchResult:
    backend: str
    ranks: int
    exit_codes: dict[str, int | None]
    seconds: float
    output_dir: str
    checkpoint_dir: str
    failed_rank: str | None = None
    reason: str = ""
    last_lines: list[str] = field(default_factory=list)
    local_ranks: list[int] = field(default_factory=list)  # the global ranks that ran on this host
    diverged: bool = False  # a rank stopped on a bad loss: retrying the same recipe would do the same
    bad_input: bool = False  # a rank refused its config or data (exit 2): a retry would refuse it again
    # the ranks that stopped advancing when no rank logged a step for launch.stall_timeout_seconds, laggards first
    # (`sknet.launch.stall.StalledRank`s); failed_rank is the first: a stall is retried, as a crashed rank is
    stalled: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_rank is None and not self.reason

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def available_devices(backend: str) -> int:
    if backend == "ascend":
        return len([p for p in Path("/dev").glob("davinci*") if re.fullmatch(r"davinci\d+", p.name)])
    return os.cpu_count() or 1


def msrun_command(cfg: Config, port: int | str, log_dir: Path, rank_command: Sequence[str]) -> list[str]:
    nodes = cfg.launch.nodes
    return [
        str(Path(sys.executable).parent / "msrun"),
        f"--worker_num={cfg.launch.ranks}", f"--local_worker_num={cfg.launch.ranks // nodes}",
        f"--master_addr={cfg.launch.master_addr}", f"--master_port={port}",
        f"--node_rank={cfg.launch.node_rank}", f"--log_dir={log_dir}", "--join=True",
        # we follow worker_N.log ourselves, with a rank prefix; msrun's -1 would `tail -f` them all again,
        # so name a worker that does not exist (msrun then tails none)
        f"--tail_worker_log={cfg.launch.ranks}",
        *rank_command[1:],  # msrun runs the script with its own `python`: our venv's bin is first on PATH
    ]


def check_launchable(cfg: Config, devices: int | None = None, port: int | str = 0
                     ) -> tuple[list[RankProcess], Admission]:
    """Refuse, before spawning anything, a launch that cannot work here; else the processes to start and the
    run's admission (its step plan and topology: `sknet.launch.admission.admit`, which each rank calls again)."""
    if cfg.launch.backend == "cpu" and cfg.train.device_target != "CPU":
        raise LaunchError(f"launch.backend=cpu runs CPU ranks; train.device_target is {cfg.train.device_target}")
    processes = plan_processes(cfg, port)
    local = sum(len(p.ranks) for p in processes)
    if devices is None:
        devices = available_devices("ascend" if cfg.train.device_target == "Ascend" else "cpu")
    kind = "Ascend devices (/dev/davinci*)" if cfg.train.device_target == "Ascend" else "CPU cores"
    if local > devices:
        raise LaunchError(f"launch.ranks={cfg.launch.ranks} needs {local} local {kind}, this host has {devices}")
    return processes, admit(cfg)


def launch(cfg: Config, *, on_line: Callable[[str], None] = print,
           command: Sequence[str] | None = None, devices: int | None = None) -> LaunchResult:
    """Run all ranks of `cfg` to completion; raise `LaunchError` (with the result) if any fails.

    `command` replaces the per-rank `sknet train` command and `devices` the detected device count
    (stand-ins for hardware that tests do not have).
    """
    on_line = _never_raising(on_line)
    port = cfg.launch.master_port or free_port()
    plan, admission = check_launchable(cfg, devices, port)
    for change in admission.steps.adjusted:
        on_line(f"the plan moves {change}")
    for note in admission.notes:
        on_line(f"note: {note}")
    output_dir = Path(cfg.train.output_dir).resolve()
    check_run_dir(cfg, output_dir, _dataset_of(cfg, command))
    log_dir = output_dir / LOGS_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / CONFIG_FILE
    config_path.write_text(cfg.to_yaml())
    _pull_mirrored_checkpoint(cfg, output_dir, on_line)
    rank_command = _rank_command(cfg, config_path, command)
    started = time.monotonic()
    local_ranks = sorted(r for p in plan for r in p.ranks)
    on_line(f"launching rank(s) {_span(local_ranks)} of {cfg.launch.ranks} with the {cfg.launch.backend} "
            f"backend; logs in {log_dir}")
    stall = StallWatch(cfg.launch.stall_timeout_seconds, local_ranks)
    with SigtermWatch() as sigterm:
        processes, tails = _start(cfg, plan, port, log_dir, rank_command, stall.watching(on_line))
        failed, reason = None, ""
        try:
            failed, reason = _wait(cfg, processes, started, sigterm.received, stall)
        finally:
            if failed or reason:
                on_line(f"stopping all ranks: {reason}")
            preempted = sigterm.received.is_set() and failed is None
            stop_all(processes, cfg.launch.stop_grace_seconds if preempted else STOP_GRACE_SECONDS)
            for rank in processes:
                rank.close()
            for tail in tails:
                tail.close()
        return _conclude(cfg, output_dir, processes, local_ranks, started, failed, reason, stall)


def _dataset_of(cfg: Config, command: Sequence[str] | None) -> str | None:
    """The digest of the dataset the ranks train on (`data.uri`, a local layout), checked against the run
    directory's record; None for a launch of another program (`command`), which trains nothing."""
    from sknet.data.layout import local_dataset_path

    return None if command else dataset_digest(local_dataset_path(cfg.data.uri))


def _never_raising(on_line: Callable[[str], None]) -> Callable[[str], None]:
    """`on_line` called for one line at a time (each rank's reader thread calls it: unserialized, two ranks'
    lines would interleave mid-line in a printed stream), with its exceptions (e.g. the progress artifact's API
    call failing) logged once, not raised: a callback must never stop a reader or the launch."""
    failed = threading.Event()
    one_at_a_time = threading.Lock()

    def call(line: str) -> None:
        try:
            with one_at_a_time:
                on_line(line)
        except Exception as exc:
            if not failed.is_set():
                failed.set()
                log.warning("the output callback failed (%s: %s); rank logs are still written under logs/",
                            type(exc).__name__, exc)

    return call


def dry_run(cfg: Config, *, devices: int | None = None) -> dict:
    """What `launch` would start on this host, without starting it: the step plan every rank will use
    (`steps_per_epoch`, `sink_size`, the cadence in force, under `plan`), and each process's ranks, device (the
    logical `device_id` it binds and the table's `physical_device_id`), command and the environment it adds
    (values of secret-looking names masked, and in any value a URL's user info and signature or token). Nothing is
    written."""
    port = cfg.launch.master_port or "<free port>"
    plan, admission = check_launchable(cfg, devices, port)
    output_dir = Path(cfg.train.output_dir).resolve()
    rank_command = _rank_command(cfg, output_dir / CONFIG_FILE, None)
    inherited = {k: v for k, v in os.environ.items() if k.startswith(DRY_RUN_INHERITED)}
    return {"backend": cfg.launch.backend, "ranks": cfg.launch.ranks, "output_dir": str(output_dir),
            "steps_per_epoch": admission.steps.steps_per_epoch, "sink_size": admission.steps.sink_size,
            "plan": admission.to_dict(),
            "processes": [{"name": p.name, "ranks": list(p.ranks), "device_id": p.device_id,
                           "physical_device_id": p.physical_device_id,
                           "command": _command_of(cfg, p, port, output_dir / LOGS_DIR, rank_command),
                           "env": _masked({**inherited, **p.env})} for p in plan]}


def _command_of(cfg: Config, process: RankProcess, port: int | str, log_dir: Path,
                rank_command: Sequence[str]) -> list[str]:
    return msrun_command(cfg, port, log_dir, rank_command) if process.name == MSRUN else list(rank_command)


def _masked(env: dict[str, str]) -> dict[str, str]:
    """`env` fit to print: "***" for a secret-looking name; in other values each URL as `_masked_url` shows it."""
    return {k: "***" if SECRET_NAME.search(k) else URL_IN_VALUE.sub(lambda m: _masked_url(m.group()), v)
            for k, v in sorted(env.items())}


def _masked_url(url: str) -> str:
    """`url` without its user info (`http://REDACTED@host`: a password, or a token as user name) and with the
    values of signature/credential/token query parameters redacted (`sknet.storage.redact_url`)."""
    try:
        shown = redact_url(url)
    except ValueError:  # not parseable as a URL (e.g. a broken IPv6 host): show none of it
        return REDACTED
    return USERINFO.sub(rf"\1{REDACTED}@", shown)


def _span(ranks: Sequence[int]) -> str:
    return f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else str(ranks[0])


def _pull_mirrored_checkpoint(cfg: Config, output_dir: Path, on_line: Callable[[str], None]) -> None:
    """Once per node, before any rank starts: the newest mirrored checkpoint if it is newer than ours (the
    ranks, started with SKNET_LAUNCHED=1, do not pull themselves)."""
    if not cfg.train.checkpoint_mirror:
        return
    from sknet.storage import store_from_config
    from sknet.training.checkpoint import CheckpointMirror

    mirror = CheckpointMirror(store_from_config(cfg.storage, cfg.train.checkpoint_mirror))
    if (step := mirror.pull(output_dir)) is not None:
        on_line(f"pulled the checkpoint of step {step} from {mirror.store.uri}")


def _rank_command(cfg: Config, config_path: Path, command: Sequence[str] | None) -> list[str]:
    """What each rank runs: `command` if given, else `sknet train` on the run's saved config."""
    train_args = ["train", "--config", str(config_path)]
    if command:
        return list(command)
    if cfg.launch.backend == "msrun":  # msrun runs a script path with its own `python`
        return [sys.executable, str(Path(__file__).parents[1] / "__main__.py"), *train_args]
    return [sys.executable, "-m", "sknet", *train_args]


def _start(cfg: Config, plan: Sequence[RankProcess], port: int, log_dir: Path, rank_command: Sequence[str],
           on_line: Callable[[str], None]) -> tuple[list[Supervised], list[LogTail]]:
    """Spawn the planned processes (this host's ranks, plus the cpu scheduler; or msrun, with a tail of
    each of this node's worker logs)."""
    base_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1", LAUNCHED_ENV: "1", **launcher_identity()}
    base_env.setdefault("GLOG_v", "3")
    if any(p.name == MSRUN for p in plan):
        retire_worker_logs(log_dir)
    tails = [LogTail(log_dir / f"worker_{rank}.log", f"[rank {rank}] ", on_line)
             for p in plan if p.name == MSRUN for rank in p.ranks]
    processes = [
        Supervised(p.name, _command_of(cfg, p, port, log_dir, rank_command), {**base_env, **p.env},
              log_dir / rank_log_file(p.name), on_line)
        for p in plan
    ]
    return processes, tails


def _wait(cfg: Config, processes: Sequence[Supervised], started: float, sigterm: threading.Event,
          stall: StallWatch) -> tuple[Supervised | None, str]:
    """Poll until every worker exited 0, a process failed, the timeout passed, the ranks stalled or SIGTERM
    came: (failed rank, reason)."""
    workers = [r for r in processes if r.name != SCHEDULER]
    timeout = cfg.launch.timeout_minutes * 60 or None
    while True:
        codes = {r.name: r.process.poll() for r in processes}
        bad = [r for r in processes if codes[r.name] not in (None, 0)]
        if bad:
            code = codes[bad[0].name]
            how = "diverged (its loss went non-finite or too large)" if code == DIVERGED_EXIT_CODE else \
                f"exited with code {code}{BAD_INPUT_REASON if code == BAD_INPUT_EXIT_CODE else ''}"
            return bad[0], f"rank {bad[0].name} {how}"
        if all(codes[r.name] == 0 for r in workers):
            return None, ""
        if timeout and time.monotonic() - started > timeout:
            return None, f"timed out after {cfg.launch.timeout_minutes:g} min (launch.timeout_minutes)"
        if stall.check():
            return None, stall.reason()
        if sigterm.is_set():
            return None, (f"SIGTERM: the ranks checkpoint at their next step boundary (within "
                          f"launch.stop_grace_seconds={cfg.launch.stop_grace_seconds:g}) and stop")
        time.sleep(0.2)


def _diverged(failed: Supervised, log_dir: Path) -> bool:
    """A rank exited with the divergence code (msrun hides it: its workers' logs say so)."""
    if failed.process.returncode == DIVERGED_EXIT_CODE:
        return True
    return failed.name == MSRUN and any(DIVERGED_MARKER in p.read_text(errors="replace")
                                        for p in log_dir.glob("worker_*.log"))


_MSRUN_FIRST_FAILURE = re.compile(r"worker (\d+) is the first one timed out")


def _msrun_failed_worker(msrun: Supervised) -> str | None:
    """The rank msrun's scheduler names as the first one lost, if it says (only msrun's output names it)."""
    found = [m.group(1) for line in msrun.tail if (m := _MSRUN_FIRST_FAILURE.search(line))]
    return found[-1] if found else None


def _conclude(cfg: Config, output_dir: Path, processes: Sequence[Supervised], local_ranks: list[int], started: float,
              failed: Supervised | None, reason: str, stall: StallWatch) -> LaunchResult:
    """The run's result, written to launch.json; raised inside a `LaunchError` when the run failed."""
    failed_rank, last_lines = (failed.name, list(failed.tail)) if failed else (None, [])
    if failed_rank == MSRUN and (worker := _msrun_failed_worker(failed)) is not None:
        failed_rank, reason = worker, f"rank {worker} failed (msrun: {reason})"
    if stall.stalled:
        failed_rank, last_lines = stall.stalled[0].rank, stall.stalled[0].last_lines
    result = LaunchResult(
        backend=cfg.launch.backend, ranks=cfg.launch.ranks,
        exit_codes={r.name: r.process.returncode for r in processes},
        seconds=round(time.monotonic() - started, 2), output_dir=str(output_dir),
        checkpoint_dir=str(checkpoint_dir(output_dir)), failed_rank=failed_rank,
        reason=reason, last_lines=last_lines, local_ranks=local_ranks,
        diverged=failed is not None and _diverged(failed, output_dir / LOGS_DIR),
        bad_input=failed is not None and failed.process.returncode == BAD_INPUT_EXIT_CODE,
        stalled=[asdict(rank) for rank in stall.stalled],
    )
    (output_dir / LAUNCH_FILE).write_text(dumps(result.to_dict(), indent=2) + "\n")
    if not result.ok:
        tail = "\n".join(result.last_lines[-10:])
        raise LaunchError(f"{reason}; last lines of its log:\n{tail}" if failed else
                          f"{reason}\n{stall.last_lines()}" if stall.stalled else reason, result)
    return result
