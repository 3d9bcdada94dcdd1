"""`sknet preflight`: the check of a new host before its first night."""

from __future__ import annotations

import argparse
import sys

from sknet.cli.common import add_config_args, config_of

PREFLIGHT_EXAMPLES = """\
examples:
  sknet preflight --config cifar10-ascend8 --set launch.rank_table=rank_table_8p.json   # a new Ascend host
  sknet preflight --config cifar10-ascend8 --set launch.rank_table=rt.json --quick      # seconds: no smoke run
  sknet preflight --config cpu-smoke --set launch.ranks=2                               # CPU: a real mccl smoke
"""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet preflight`: the check of a new host before its first night."""
    preflight = commands.add_parser(
        "preflight", help="check this host before a run: versions, NPUs, device links vs hccn.conf, the launch "
        "plan, a collective smoke (JSON on stdout, a table on stderr; exit 1 if a check fails)",
        description="Run every check on its own, with the settings of the run this host will take:\n"
        "  versions      Python, MindSpore, numpy; NPU driver and CANN (against what MindSpore accepts)\n"
        "  npu-smi       every chip: Health OK, HBM free, no process on it\n"
        "  device-links  per planned device: hccn_tool link UP, net health Success\n"
        "  device-ips    per planned device: hccn_tool's IP = hccn.conf's = the rank table's\n"
        "  launch-plan   what `sknet launch --dry-run` computes, or why it refuses\n"
        "  collective    (slow) every rank through the launcher: group size, an all-reduce of ones,\n"
        "                a 64 MiB all-reduce's bandwidth\n"
        "A check that cannot run on this host is skipped with the reason. A table goes to stderr, the JSON\n"
        "report to stdout. Exit 0: no check failed; 1: a check failed; 2: bad input.",
        epilog=PREFLIGHT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(preflight)
    preflight.add_argument("--quick", action="store_true",
                           help="leave out the slow checks (the collective smoke): seconds, as before a nightly run")
    preflight.add_argument("--work", default="work/preflight", metavar="DIR",
                           help="scratch directory for smoke runs (default work/preflight; kept only on failure)")
    preflight.add_argument("--hccn-conf", default="/etc/hccn.conf", metavar="FILE",
                           help="the device IPs to compare hccn_tool with (address_N=IP lines; default /etc/hccn.conf)")
    preflight.set_defaults(handler=run_preflight_command)


def run_preflight_command(args: argparse.Namespace) -> None:
    """`sknet preflight`: the table on stderr as the checks finish, the JSON report on stdout; `PreflightFailed`
    if one failed."""
    from sknet.jsonio import dumps
    from sknet.preflight.registry import run_preflight
    from sknet.preflight.runner import TABLE_HEADER, enforce, format_row, summary

    cfg = config_of(args)
    print(TABLE_HEADER, file=sys.stderr, flush=True)
    report = run_preflight(cfg, args.work, quick=args.quick, hccn_conf=args.hccn_conf,
                           on_result=lambda result: print(format_row(result), file=sys.stderr, flush=True),
                           on_start=lambda check: print(f"{check.name:<14} …      (running: a slow check, minutes on "
                                                        "Ascend)", file=sys.stderr, flush=True))
    print(summary(report), file=sys.stderr)
    print(dumps(report, indent=2))
    enforce(report)
