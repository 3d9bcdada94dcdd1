"""Chaos: smoke flow runs in a row through the real stack while faults are injected; what survives.

    python -m bench chaos [--runs N] [--seed S]       # or `make bench` (all benches); ≈ 11 min for N=8

Moto's S3 server behind the fault-injecting proxy (infra/faultproxy.py), `prefect server start`, the
process pool, deployments/prefect.yaml applied and a worker (infra/stack.py), all on 127.0.0.1 in a scratch
directory; the work dir (dataset cache, run directories) is a small tmpfs mounted for the bench (root
needed). N `sknet-train/smoke` flow runs, one after the other, each with one or two faults drawn from the
seed (the same seed gives the same faults at the same points of training):

    s3            the proxy answers a share of requests with 500 / 503 / SlowDown for a while
    kill_rank     SIGKILL to the training rank (`sknet train --config <run dir>/config.yaml`, MS_WORKER)
    sigterm_flow  SIGTERM to the worker's flow-run process (`python -m prefect.engine` of this flow run)
    disk_full     a ballast file fills the work dir's tmpfs during training, removed a while later

After every run: its final state (classified by the cause its message names), every release under
`releases/sknet-tiny/` with a manifest checked object by object (size and sha256), LATEST pointing at a
complete release, processes of the run still alive after a grace period (orphans), temp files (`.partial*`,
`.mirror-spool`, `.writing`, open multipart uploads) in the work dir and the bucket, and bytes lost (a
release's objects missing or changed, or the run's newest mirrored checkpoint gone before it finished).
Writes bench/results/chaos.json, prints the JSON and a table on stderr; exit 1 unless every run ended
Completed or Failed/Crashed naming its cause, every release is complete, LATEST always named a complete one,
and no process was orphaned and no byte lost (temp files left are reported, not failed on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.checks import (
    MODEL,
    classify,
    evidence,
    latest_check,
    mirrored_steps,
    object_sha256,
    temp_keys,
    temp_paths,
    verify_prefixes,
)
from bench.chaos.faults import Injector, plan_faults
from bench.chaos.processes import run_processes, send_signal
from bench.chaos.site import BUCKET, Site, set_up, tear_down
from bench.chaos.summary import print_table, report

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
RUN_TIMEOUT = 360  # a run not final by then is "hung" (a smoke run here takes ≈ 35 s, a retried one ≈ 90 s)
ORPHAN_GRACE = 30  # seconds a finished run's processes get to exit

log = logging.getLogger("bench.chaos")


# ------------------------------------------------------------------ one run with its faults

@dataclass
class Watch:
    """What watching one run saw: its processes, and its complete mirrored checkpoints over time."""
    seen_processes: dict[int, dict] = field(default_factory=dict)
    mirror_max: dict[int, int] = field(default_factory=dict)  # every mirrored step seen: step → bytes
    mirror_regressions: list[dict] = field(default_factory=list)  # the newest mirrored step went back
    last_mirror_poll: float = 0.0

    def saw_mirrored(self, steps: dict[int, int]) -> None:
        if steps:
            newest = max(steps)
            if self.mirror_max and newest < max(self.mirror_max):
                self.mirror_regressions.append({"newest_was": max(self.mirror_max), "newest_now": newest})
            self.mirror_max.update(steps)


def one_run(site: Site, index: int, faults: list[dict], seen: dict[tuple, dict]) -> dict:
    """A smoke flow run with its faults, watched to its end (cancelled if hung), then its record."""
    run = site.api(f"deployments/{site.deployment_id}/create_flow_run", {"parameters": site.parameters})
    run_id = run["id"]
    injector = Injector(site, run_id, faults)
    watch = Watch()
    created = time.monotonic()
    state = watch_run(site, run_id, injector, watch, seen, created)
    hung = state["type"] not in FINAL
    if hung:  # cancel it; whatever is left is killed below
        state = cancel(site, run_id)
    seconds = time.monotonic() - created
    injector.end_all(seconds)
    left = stop_orphans(run_id)
    final_steps = {}
    with contextlib.suppress(Exception):
        final_steps = mirrored_steps(site.direct, run_id)
    lost = mirror_losses(site, run_id, watch, final_steps)
    category, cause = classify(state["type"], state.get("message"))
    tasks = task_summaries(site, run_id)
    explained = {}
    with contextlib.suppress(Exception):
        explained = evidence(site, run_id)
    return {
        "index": index, "flow_run_id": run_id, "state": state["type"], "state_name": state.get("name"),
        "message": (state.get("message") or "")[:600], "category": "other" if hung else category,
        "cause": "hung" if hung else cause, "seconds": round(seconds, 1),
        "faults": [f.to_dict() for f in injector.faults], "tasks": tasks,
        "processes_seen": sorted({p["role"] for p in watch.seen_processes.values()}),
        "orphans": left, "mirrored_steps_seen": sorted(watch.mirror_max), "mirrored_steps": sorted(final_steps),
        "lost": lost, "evidence": explained,
    }


def watch_run(site: Site, run_id: str, injector: Injector, watch: Watch, seen: dict[tuple, dict],
              created: float) -> dict:
    """Poll the run until it is final or RUN_TIMEOUT has passed, firing its faults when due: its last state."""
    run_dir = site.work / "runs" / run_id
    while True:
        elapsed = time.monotonic() - created
        state = site.api(f"flow_runs/{run_id}")["state"]
        if state["type"] in FINAL or elapsed > RUN_TIMEOUT:
            return state
        processes = run_processes(run_id)
        for p in processes:
            watch.seen_processes.setdefault(p["pid"], p)
            seen[p["pid"], p["started"]] = p  # a PID with its start time: never another process
        injector.tick(elapsed, _progress_step(run_dir), _trained(run_dir), processes)
        if time.monotonic() - watch.last_mirror_poll > 2:
            watch.last_mirror_poll = time.monotonic()
            with contextlib.suppress(Exception):
                watch.saw_mirrored(mirrored_steps(site.direct, run_id))
        time.sleep(0.5)


def cancel(site: Site, run_id: str) -> dict:
    """Cancel a hung run and give it a minute to become final: its state then."""
    with contextlib.suppress(Exception):
        site.api(f"flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and site.api(f"flow_runs/{run_id}")["state"]["type"] not in FINAL:
        time.sleep(2)
    return site.api(f"flow_runs/{run_id}")["state"]


def stop_orphans(run_id: str) -> list[dict]:
    """Processes of the finished run still alive after the grace period: orphans (then stopped here)."""
    deadline = time.monotonic() + ORPHAN_GRACE
    while (left := run_processes(run_id)) and time.monotonic() < deadline:
        time.sleep(1)
    for p in left:
        send_signal(p, signal.SIGKILL)
    return left


def mirror_losses(site: Site, run_id: str, watch: Watch, final_steps: dict[int, int]) -> list[dict]:
    """The mirror: the newest complete checkpoint seen during the run must still be there, intact."""
    lost = []
    mirror_max = watch.mirror_max
    if mirror_max and (not final_steps or max(final_steps) < max(mirror_max)):
        lost.append({"what": f"runs/{run_id}/checkpoints: newest mirrored step {max(mirror_max)} gone, newest "
                             f"now {max(final_steps) if final_steps else None}", "bytes": mirror_max[max(mirror_max)]})
    for regression in watch.mirror_regressions:
        lost.append({"what": f"runs/{run_id}/checkpoints: newest step went {regression['newest_was']} → "
                             f"{regression['newest_now']} during the run",
                     "bytes": mirror_max[regression["newest_was"]]})
    if final_steps:
        newest = max(final_steps)
        record = json.loads(site.direct.get_bytes(f"runs/{run_id}/checkpoints/step-{newest:08d}.ckpt.sha256"))
        if object_sha256(site.direct, f"runs/{run_id}/checkpoints/step-{newest:08d}.ckpt", site.scratch) \
                != record["sha256"]:
            lost.append({"what": f"runs/{run_id}/checkpoints/step-{newest:08d}.ckpt differs from its record",
                         "bytes": final_steps[newest]})
    return lost


def task_summaries(site: Site, run_id: str) -> list[dict]:
    """The run's task runs by name: state, run count, and the message of any that did not complete."""
    tasks = site.api("task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    return sorted(({"name": t["name"].split(" ", 1)[0], "state": t["state"]["name"] if t["state"] else None,
                    "run_count": t["run_count"],
                    **({"message": (t["state"].get("message") or "")[:400]}
                       if t["state"] and t["state"]["type"] != "COMPLETED" else {})}
                   for t in tasks), key=lambda t: t["name"])


def _progress_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [0]
    for line in lines[-5:]:
        with contextlib.suppress(ValueError, AttributeError):
            steps.append(int(json.loads(line).get("step") or 0))
    return max(steps)


def _trained(run_dir: Path) -> bool:
    """Training finished (rank 0's result.json says complete): evaluation and publishing come next."""
    try:
        return json.loads((run_dir / "result.json").read_text()).get("complete") is True
    except (OSError, ValueError):
        return False


def after_run(site: Site, record: dict, known_temp: set[str], verified: dict[str, int]) -> None:
    """The checks that follow every run: releases and LATEST, temp files, bytes lost from earlier releases."""
    releases = verify_prefixes(site.direct, f"releases/{MODEL}", site.scratch)
    latest = latest_check(site.direct, releases["complete"])
    record["releases"] = {"complete": len(releases["complete"]), "broken": releases["broken"],
                          "unpublished": releases["unpublished"], "latest": latest["version"],
                          "latest_complete": latest["ok"]}
    for name, problems in releases["broken"].items():
        if name in verified:  # complete once, broken now: its bytes are lost
            record["lost"].append({"what": f"releases/{MODEL}/{name}: {'; '.join(problems)}", "bytes": verified[name]})
        else:
            record["lost"].append({"what": f"releases/{MODEL}/{name} has a manifest but {'; '.join(problems)}",
                                   "bytes": releases["lost_bytes"]})
    for name in releases["complete"]:
        manifest = json.loads(site.direct.get_bytes(f"releases/{MODEL}/{name}/manifest.json"))
        verified[name] = sum(entry["size"] for entry in manifest["files"].values())
    keys = [o.key for o in site.direct.list()]
    uploads = site.direct.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    now = {f"work:{p}" for p in temp_paths(site.work)} | {f"bucket:{k}" for k in temp_keys(keys)} | \
          {f"bucket:{u['Key']} (open multipart upload)" for u in uploads}
    record["temp_files_new"] = sorted(now - known_temp)
    record["temp_files_gone"] = sorted(known_temp - now)
    known_temp.clear()
    known_temp.update(now)


# ------------------------------------------------------------------ the whole bench

def bench_chaos(runs: int = 8, seed: int = 12, max_minutes: float = 15) -> dict:
    from bench.models import machine

    started = time.monotonic()
    logging.getLogger("sknet").setLevel(logging.WARNING)
    plans = plan_faults(runs, seed)
    records: list[dict] = []
    seen: dict[tuple, dict] = {}  # every run process, for the tear-down
    known_temp: set[str] = set()
    verified: dict[str, int] = {}
    teardown_problems: list[str] = []
    error = None
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a TERM still unmounts and stops all
    scratch = Path(tempfile.mkdtemp(prefix="sknet-bench-chaos-"))
    site = Site(scratch=scratch, work=scratch / "work")
    try:
        set_up(site, seed)
        log.info("set up in %.0f s: moto %s, proxy %s, prefect %s", time.monotonic() - started, site.s3.endpoint,
                 site.proxy.endpoint, site.stack.api_url)
        for index, faults in enumerate(plans):
            if time.monotonic() - started > max_minutes * 60 - 240:  # no time left for another run
                records.append({"index": index, "skipped": "time budget", "faults": faults})
                continue
            if not _worker_alive(site):
                log.warning("the worker is gone; starting another")
                site.stack.start_worker({"AWS_ENDPOINT_URL": site.proxy.endpoint})
            record = one_run(site, index, faults, seen)
            record["worker_alive_after"] = _worker_alive(site)
            after_run(site, record, known_temp, verified)
            records.append(record)
            log.info("run %d: %s %s (%s) in %.0f s; faults %s", index, record["state"], record["category"],
                     record["cause"], record["seconds"], [f["kind"] for f in record["faults"]])
    except BaseException as exc:  # noqa: BLE001 — reported in the JSON, after the clean-up
        error = f"{type(exc).__name__}: {exc}"
        log.exception("chaos bench stopped")
    finally:
        teardown_problems = tear_down(site, seen)
        signal.signal(signal.SIGTERM, previous)
        subprocess.run(["rm", "-rf", str(scratch)], timeout=120) if not site.mounted else None
    return report(records, seed, runs, time.monotonic() - started, error, teardown_problems, machine())


def _worker_alive(site: Site) -> bool:
    return site.stack.worker_running()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="flow runs in a row (default 8, ≈ 11 min)")
    parser.add_argument("--seed", type=int, default=12, help="seeds which faults hit which run, and when")
    parser.add_argument("--max-minutes", type=float, default=15,
                        help="start no run that could end after this (default 15)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    result = bench_chaos(args.runs, args.seed, args.max_minutes)
    results = Path(__file__).parents[1] / "results"  # bench/results
    results.mkdir(exist_ok=True)
    (results / "chaos.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print_table(result)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["pass"] else 1

