"""`sknet ranktable`: an HCCL rank table from device IPs, or several merged."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet ranktable`: an HCCL rank table from device IPs, or several merged."""
    from sknet.launch.ranktable import CHIPS  # standard library only: --help stays fast

    ranktable = commands.add_parser(
        "ranktable", help="write an HCCL rank table (v1.0) for Ascend devices, or merge several servers' tables",
        description="Device IPs come from --hccn-conf FILE (address_N=IP lines) or, without it, from\n"
        "`hccn_tool -i N -ip -g`. --devices are the ids the ranks see (logical); the table names the\n"
        "PHYSICAL NPU behind each, as HCCL expects: the NPUs of --visible-devices, else of\n"
        "ASCEND_VISIBLE_DEVICES (set by the Ascend Docker runtime / k8s device plugin), else the ids themselves.\n"
        "On an Ascend 910 a job takes 1, 2 or 4 devices within one HCCS group (0-3 or 4-7), or all eight;\n"
        "on an Atlas A2 (910B) any range is fine.",
        epilog="examples:\n"
        "  sknet ranktable --hccn-conf /etc/hccn.conf --devices 0-7 --server-ip 10.0.0.1 --out rank_table_8p.json\n"
        "  # a container with physical NPUs 4-7 (seen inside as 0-3): the table names 4-7\n"
        "  sknet ranktable --hccn-conf /etc/hccn.conf --devices 0-3 --visible-devices 4,5,6,7 --out rt.json\n"
        "  sknet ranktable --hccn-conf /etc/hccn.conf --devices 2-5 --chip 910B --out rt.json\n"
        "  sknet ranktable --merge server1.json server2.json --out rank_table_16p.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ranktable.add_argument("--hccn-conf", metavar="FILE", help="read device IPs from this file instead of hccn_tool")
    ranktable.add_argument("--devices", help="device ids the ranks use, as seen by them (logical), e.g. 0-3 "
                           "(default: every visible device)")
    ranktable.add_argument("--visible-devices", metavar="IDS",
                           help="the physical NPUs this host's processes see, as ASCEND_VISIBLE_DEVICES writes "
                           "them (4,5,6,7 or 4-7; logical ids follow ascending physical order); default: "
                           "ASCEND_VISIBLE_DEVICES if set, else identity")
    ranktable.add_argument("--chip", choices=CHIPS, default="910",
                           help="Ascend 910 (HCCS groups 0-3 / 4-7; 1, 2, 4 or 8 devices) or 910B (any set); "
                           "default 910")
    ranktable.add_argument("--server-ip", help="this server's IP (default: resolved from the hostname)")
    ranktable.add_argument("--merge", nargs="+", metavar="TABLE", help="merge these tables; rank ids continue")
    ranktable.add_argument("--out", required=True, metavar="FILE", help="where to write the table")
    ranktable.set_defaults(handler=run_ranktable)


def run_ranktable(args: argparse.Namespace) -> dict:
    from sknet.launch import ranktable as rt

    if args.merge:
        table = rt.merge_rank_tables([rt.load_rank_table(path) for path in args.merge])
    else:
        visible = rt.visible_devices(args.visible_devices)
        devices = rt.parse_devices(args.devices) if args.devices else \
            list(range(rt.DEVICES_PER_SERVER if visible is None else len(visible)))
        physical = rt.physical_devices(devices, visible, args.chip)
        ips = rt.read_hccn_conf(args.hccn_conf) if args.hccn_conf else rt.query_hccn_tool(physical)
        table = rt.build_rank_table(ips, devices, args.server_ip or rt.default_server_ip(), visible, args.chip)
    path = rt.write_rank_table(table, args.out)
    return {"out": str(path), "servers": int(table["server_count"]), "ranks": rt.rank_size(table)}
