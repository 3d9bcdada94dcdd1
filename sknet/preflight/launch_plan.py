"""The launch plan: what `sknet launch --dry-run` computes for this host, or why it refuses."""

from __future__ import annotations

from sknet.errors import SknetError
from sknet.preflight.runner import Context, Failed, Outcome


def check_launch_plan(ctx: Context) -> Outcome:
    """The processes this host would start and the step plan every rank will use (`sknet.launch.launcher.dry_run`,
    which calls `sknet.launch.admission.admit` as each rank does); its refusal is the failure."""
    from sknet.launch.launcher import dry_run

    try:
        plan = dry_run(ctx.cfg)
    except SknetError as exc:
        raise Failed(f"the launch plan is refused: {exc}") from None
    processes = plan["processes"]
    ranks = sorted(rank for p in processes for rank in p["ranks"])
    devices = [p.get("physical_device_id", p["device_id"]) for p in processes if p["device_id"] is not None]
    where = f" on NPU(s) {', '.join(map(str, devices))}" if devices else ""
    steps = plan["plan"]
    detail = (f"{plan['backend']} backend: {len(processes)} process(es) on this host for rank(s) "
              f"{', '.join(map(str, ranks))} of {plan['ranks']}{where}; {steps['steps_per_epoch']} steps per epoch, "
              f"{_sink(steps['sink_size'])}" + "".join(f"\nthe plan moves {change}" for change in steps["adjusted"]))
    data = {"backend": plan["backend"], "ranks": plan["ranks"], "local_ranks": ranks, "steps": steps,
            "processes": [{k: v for k, v in p.items() if k in ("name", "ranks", "device_id", "physical_device_id")}
                          for p in processes]}
    return Outcome(detail, data)


def _sink(size: int) -> str:
    return f"a sink of {size} steps" if size > 1 else "no dataset sink (the host feeds every step)"
