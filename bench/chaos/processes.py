"""The chaos bench's view of a run's processes: found by what their command line and environment name, and
signalled only while their PID still names them. The injector's faults, the orphan check and the tear-down use it."""

from __future__ import annotations


def run_processes(run_id: str) -> list[dict]:
    """The live processes of flow run `run_id`: its flow-run process (`prefect.engine` with the run's id in
    PREFECT__FLOW_RUN_ID) and its `sknet train` ranks / scheduler / msrun (their command names the run dir)."""
    import psutil

    needle = f"/runs/{run_id}/config.yaml"
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if needle in command:
                role = {"MS_WORKER": "rank", "MS_SCHED": "scheduler"}.get(process.environ().get("MS_ROLE"), "train")
                role = "msrun" if "msrun" in command else role
            elif "prefect.engine" in command and process.environ().get("PREFECT__FLOW_RUN_ID") == run_id:
                role = "flow-run"
            else:
                continue
            found.append({"pid": process.pid, "started": process.create_time(), "role": role,
                          "cmdline": command[:300]})
        except psutil.Error:
            continue
    return found


def send_signal(process: dict, sig: int) -> bool:
    """Signal a process `run_processes` found; False if it is gone, its PID now names another process (another
    start time), or it is not ours to signal."""
    import psutil

    try:
        found = psutil.Process(process["pid"])
        if found.create_time() != process["started"]:
            return False
        found.send_signal(sig)
        return True
    except psutil.Error:
        return False
