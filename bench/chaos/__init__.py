"""The chaos bench, `python -m bench chaos` (what it runs and checks: bench/chaos/run.py):

    faults     which faults hit which run and when (seeded), and the injector that fires and undoes them
    checks     a run's final state classified; releases, LATEST, mirrored checkpoints, temp files, its evidence
    processes  a run's live processes, found and signalled (only while their PID still names them)
    site       moto behind the fault proxy, the Prefect stack and the work dir's tmpfs: set up, torn down
    run        one run with its faults, the checks after it, the runs in a row, `main`
    summary    the result over all runs, what must hold for it to pass, the table
"""

from bench.chaos.checks import classify, latest_check, mirrored_steps, temp_keys, temp_paths, verify_prefixes
from bench.chaos.faults import KINDS, plan_faults
from bench.chaos.run import bench_chaos, main
from bench.chaos.site import STEPS
from bench.chaos.summary import print_table, report

__all__ = ["KINDS", "STEPS", "bench_chaos", "classify", "latest_check", "main", "mirrored_steps", "plan_faults",
           "print_table", "report", "temp_keys", "temp_paths", "verify_prefixes"]
