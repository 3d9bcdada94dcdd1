"""The chaos bench's result: the summary over all runs, what must hold for it to pass, and the table on
stderr."""

from __future__ import annotations

import json
import sys

from bench.chaos.faults import KINDS
from bench.chaos.site import QUOTA_MB, SMOKE, STEPS


def report(records: list[dict], seed: int, runs: int, seconds: float, error: str | None,
           teardown_problems: list[str], machine: dict) -> dict:
    done = [r for r in records if "skipped" not in r]
    count = lambda category: sum(r["category"] == category for r in done)  # noqa: E731
    last = done[-1]["releases"] if done and "releases" in done[-1] else {}
    temp_left = sorted(set().union(*[set(r.get("temp_files_new", [])) for r in done])) if done else []
    temp_now = sorted(set(temp_left) - set().union(*[set(r.get("temp_files_gone", [])) for r in done])) if done else []
    summary = {
        "runs": len(done), "skipped": len(records) - len(done),
        "completed": count("completed"), "failed_with_reason": count("failed_with_reason"), "other": count("other"),
        "causes": {c: sum(r["cause"] == c for r in done) for c in sorted({r["cause"] for r in done if r["cause"]})},
        "releases_complete": last.get("complete", 0), "releases_broken": len(last.get("broken", {})),
        "latest_always_complete": all(r.get("releases", {}).get("latest_complete", False) for r in done),
        "latest_checks": sum("releases" in r for r in done),
        "orphan_processes": sum(len(r["orphans"]) for r in done),
        "temp_files_left": len(temp_now), "temp_files_seen": temp_left,
        "bytes_lost": sum(item["bytes"] for r in done for item in r["lost"]),
        "faults_injected": {k: sum(f["kind"] == k and f["injected"] for r in done for f in r["faults"]) for k in KINDS},
        "faults_not_injected": sum(not f["injected"] for r in done for f in r["faults"]),
        # completed, but the last checkpoint never reached the mirror (a retry elsewhere would train it again)
        "completed_with_final_checkpoint_unmirrored": sum(
            r["category"] == "completed" and STEPS not in r["mirrored_steps"] for r in done),
    }
    # what must hold whatever the faults; temp files left are reported (findings) but do not fail the bench
    passed = (error is None and not teardown_problems and summary["runs"] == runs and summary["other"] == 0
              and summary["releases_broken"] == 0 and summary["latest_always_complete"]
              and summary["orphan_processes"] == 0 and summary["bytes_lost"] == 0)
    return {"benchmark": "chaos", "machine": machine, "seed": seed, "runs_requested": runs,
            "input": "sknet-train/smoke through prefect server + process worker; cpu-smoke with " + json.dumps(SMOKE)
                     + f"; S3 = moto behind infra/faultproxy.py; work dir on a {QUOTA_MB} MB tmpfs",
            "summary": summary, "pass": passed,
            "pass_requires": "every run completed or failed naming its cause (none hung or crashed without one), "
                             "every release complete, LATEST complete after every run, 0 orphan processes, 0 bytes "
                             "lost, a clean set-up and tear-down",
            "error": error, "teardown_problems": teardown_problems,
            "runs": records, "seconds": round(seconds, 1)}


def print_table(result: dict) -> None:
    print(f"\n{'run':>3} {'faults':34} {'state':10} {'category':18} {'cause':8} {'s':>5} {'orph':>4} {'tmp+':>4} "
          f"{'lost':>5} {'LATEST':8}", file=sys.stderr)
    for r in result["runs"]:
        if "skipped" in r:
            print(f"{r['index']:3} skipped ({r['skipped']})", file=sys.stderr)
            continue
        faults = ", ".join(f["kind"] + ("" if f["injected"] else "(-)") for f in r["faults"])
        latest = r.get("releases", {})
        print(f"{r['index']:3} {faults:34} {r['state']:10} {r['category']:18} {r['cause'] or '':8} {r['seconds']:5.0f} "
              f"{len(r['orphans']):4} {len(r.get('temp_files_new', [])):4} {sum(i['bytes'] for i in r['lost']):5} "
              f"{'ok' if latest.get('latest_complete') else 'BAD':8}", file=sys.stderr)
    s = result["summary"]
    print(f"completed {s['completed']}, failed with a reason {s['failed_with_reason']}, other {s['other']}; "
          f"releases complete {s['releases_complete']} (broken {s['releases_broken']}); LATEST always complete "
          f"{s['latest_always_complete']}; orphans {s['orphan_processes']}; temp files left {s['temp_files_left']}; "
          f"bytes lost {s['bytes_lost']}; {result['seconds']:.0f} s; {'PASS' if result['pass'] else 'FAIL'}",
          file=sys.stderr)
