"""The `sknet` command: every pipeline stage, runnable by hand without Prefect.

Logs go to stderr; machine-readable results (JSON) go to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sknet.errors import SknetError

if TYPE_CHECKING:
    from sknet.config import Config

EXAMPLES = """\
examples:
  sknet data synth --out work/data                      # synthetic CIFAR-10 layout (demo/test only)
  sknet data verify work/data
  sknet config show --config cpu-smoke --set train.epochs=1
  sknet train --config cpu-smoke --set data.uri=work/data train.output_dir=work/runs/smoke
  sknet eval --config cpu-smoke --set data.uri=work/data --checkpoint work/runs/smoke/checkpoints/step-00000060.ckpt
  sknet export --config cpu-smoke --checkpoint CKPT --out work/model.mindir --dynamic-batch
  sknet release ls --store s3://my-bucket/sknet --model sknet50
  sknet preflight --config cifar10-ascend8 --set launch.rank_table=rank_table_8p.json   # a new Ascend host
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="NAME|PATH",
        help="a shipped profile (cifar10-ascend8, cpu-smoke) or a YAML file",
    )
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="dotted overrides applied after the profile, e.g. --set train.epochs=1 data.uri=work/data",
    )


def _add_fresh_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fresh", action="store_true",
                        help="start over: move an existing train.output_dir aside to <dir>.replaced-<time> "
                        "(kept, never deleted) instead of resuming from it")


def _add_storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=None, metavar="URL",
                        help="S3 endpoint for MinIO / Huawei OBS (default: AWS, or AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=None, help="S3 region (default: the boto3 chain's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sknet", description="Train, evaluate and export SKNet-50 on CIFAR-10 (Ascend, GPU or CPU).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_data_commands(commands)
    _add_ranktable_command(commands)
    _add_config_command(commands)
    _add_training_commands(commands)
    _add_gate_command(commands)
    _add_eval_command(commands)
    _add_export_command(commands)
    _add_release_commands(commands)
    _add_preflight_command(commands)
    return parser


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet data synth|verify|stage|fetch`: the CIFAR-10 layout, local and staged."""
    data = commands.add_parser("data", help="CIFAR-10 binary layout: synth, verify, stage, fetch")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_commands.add_parser(
        "synth", help="write a deterministic full-size synthetic layout (≈184 MB; marked SYNTHETIC)",
        description="Write DIR/cifar-10-batches-bin/ with learnable synthetic classes. "
        "For tests and demos only: it is marked SYNTHETIC and never replaces real data silently.",
        epilog="example: sknet data synth --out work/data --seed 0",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="parent directory of cifar-10-batches-bin/")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--force", action="store_true", help="overwrite an existing layout")
    verify = data_commands.add_parser(
        "verify", help="check a local layout, or a staged dataset's objects against its manifest",
        epilog="examples:\n  sknet data verify work/data\n  sknet data verify s3://bucket/datasets/cifar10/<digest>",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("path", metavar="DIR|URI", help="cifar-10-batches-bin/ (or its parent), or a dataset URI")
    _add_storage_args(verify)
    stage = data_commands.add_parser(
        "stage", help="verify CIFAR-10 and publish it to object storage under its manifest digest",
        description="SRC is the official tarball URL, a local tarball or a layout directory. Prints the "
        "dataset URI (<dest>/<digest>). Re-staging identical data uploads nothing.",
        epilog="example: sknet data stage --source https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz "
        "--dest s3://my-bucket/datasets/cifar10",
    )
    stage.add_argument("--source", required=True, metavar="SRC", help="URL, tarball or layout directory")
    stage.add_argument("--dest", required=True, metavar="URI", help="s3://bucket/prefix or file:///path")
    stage.add_argument("--expected-md5", default=None, metavar="HEX",
                       help="MD5 a tarball must have (default: the official cifar-10-binary.tar.gz's)")
    stage.add_argument("--max-class-skew", type=float, default=0.1, metavar="FRACTION",
                       help="refuse a split whose class count is off its mean by more than this fraction of it, "
                       "or that misses a class (default 0.1 = 10%%)")
    stage.add_argument("--allow-skew", action="store_true",
                       help="stage a skewed dataset anyway; its census records that the skew was allowed")
    _add_storage_args(stage)
    fetch = data_commands.add_parser(
        "fetch", help="download a staged dataset into a verified local cache (no-op when cached)",
        epilog="example: sknet data fetch s3://my-bucket/datasets/cifar10/<digest> --cache work/cache",
    )
    fetch.add_argument("uri", metavar="URI", help="a dataset URI printed by `sknet data stage`")
    fetch.add_argument("--cache", default="work/cache", metavar="DIR", help="cache directory (default work/cache)")
    _add_storage_args(fetch)


def _add_ranktable_command(commands: argparse._SubParsersAction) -> None:
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


def _add_config_command(commands: argparse._SubParsersAction) -> None:
    """`sknet config show`: the resolved config and its digest."""
    config = commands.add_parser("config", help="show the resolved config and its digest")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", help="print the resolved YAML and digest",
        epilog="example: sknet config show --config cpu-smoke --set train.epochs=1",
    )
    _add_config_args(show)


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet train` (one rank) and `sknet launch` (all ranks, supervised)."""
    train = commands.add_parser(
        "train", help="train one rank (resumes from the newest checkpoint in train.output_dir)",
        epilog="example: sknet train --config cpu-smoke --set data.uri=work/data train.output_dir=work/runs/smoke",
    )
    _add_config_args(train)
    _add_fresh_arg(train)

    launch = commands.add_parser(
        "launch", help="start and supervise all ranks of a run (launch.backend: cpu, ascend, msrun)",
        epilog="examples:\n"
        "  sknet launch --config cpu-smoke --set launch.ranks=2 data.uri=work/data train.output_dir=work/runs/dp2\n"
        "  sknet launch --dry-run --config cifar10-ascend8 --set launch.rank_table=rank_table_16p.json "
        "launch.ranks=16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(launch)
    _add_fresh_arg(launch)
    launch.add_argument("--dry-run", action="store_true",
                        help="print, as JSON, every process this host would start (ranks, device id, command, "
                        "environment with secrets masked) and start nothing")


def _add_gate_command(commands: argparse._SubParsersAction) -> None:
    """`sknet gate`: pass/fail on eval metrics."""
    gate = commands.add_parser(
        "gate", help="pass/fail a model on its metrics (gate.metric ≥ gate.threshold, optionally ≥ champion + margin)",
        epilog="example: sknet eval … > metrics.json; sknet gate --config cpu-smoke --metrics metrics.json",
    )
    _add_config_args(gate)
    gate.add_argument("--metrics", required=True, metavar="FILE", help="JSON written by `sknet eval`")
    gate.add_argument("--champion", metavar="FILE", help="metrics of the current release to beat")


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    """`sknet eval`: accuracy and loss of a checkpoint."""
    evaluate = commands.add_parser(
        "eval", help="top-1/top-5, per-class accuracy, confusion matrix and loss of a checkpoint, printed as JSON",
        epilog="example: sknet eval --config cpu-smoke --set data.uri=work/data "
               "--checkpoint RUN/checkpoints/step-00000060.ckpt",
    )
    _add_config_args(evaluate)
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .ckpt written by sknet train")
    evaluate.add_argument("--predictions", metavar="FILE",
                          help="also write each sample's label and top-1 prediction here (JSON, in eval order)")


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    """`sknet export`: MINDIR with a round-trip check."""
    export = commands.add_parser(
        "export", help="write MINDIR and check that it round-trips (--score: and that it scores as its checkpoint)",
        epilog="example: sknet export --config cpu-smoke --set data.uri=work/data --checkpoint CKPT "
               "--out work/model.mindir --dynamic-batch --score",
    )
    _add_config_args(export)
    export.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .ckpt written by sknet train")
    export.add_argument("--out", required=True, metavar="FILE.mindir", help="where to write the model")
    export.add_argument(
        "--dynamic-batch", action="store_true", default=None,
        help="leave the batch dimension free (default: export.dynamic_batch, static export.batch_size)",
    )
    export.add_argument(
        "--score", action="store_true",
        help="also score the checkpoint and the MINDIR (nn.GraphCell) on the eval set (data.uri), as the flow does; "
             "a MINDIR whose top-1 differs by more than export.accuracy_tolerance is refused and removed",
    )


PREFLIGHT_EXAMPLES = """\
examples:
  sknet preflight --config cifar10-ascend8 --set launch.rank_table=rank_table_8p.json   # a new Ascend host
  sknet preflight --config cifar10-ascend8 --set launch.rank_table=rt.json --quick      # seconds: no smoke run
  sknet preflight --config cpu-smoke --set launch.ranks=2                               # CPU: a real mccl smoke
"""


def _add_preflight_command(commands: argparse._SubParsersAction) -> None:
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
    _add_config_args(preflight)
    preflight.add_argument("--quick", action="store_true",
                           help="leave out the slow checks (the collective smoke): seconds, as before a nightly run")
    preflight.add_argument("--work", default="work/preflight", metavar="DIR",
                           help="scratch directory for smoke runs (default work/preflight; kept only on failure)")
    preflight.add_argument("--hccn-conf", default="/etc/hccn.conf", metavar="FILE",
                           help="the device IPs to compare hccn_tool with (address_N=IP lines; default /etc/hccn.conf)")


RELEASE_EXAMPLES = """\
examples:
  sknet release ls --store s3://my-bucket/sknet                       # every model's versions, LATEST marked
  sknet release ls --store file:///srv/sknet --model sknet-tiny
  sknet release promote --store s3://my-bucket/sknet --model sknet50 --version <flow-run-id> --reason "night data"
  sknet release history --store s3://my-bucket/sknet --model sknet50 --json      # every move of LATEST
  sknet release ls --store s3://my-bucket/sknet --model sknet50 --at 2026-12-01T06:00:00Z   # LATEST back then
"""


def _add_release_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet release ls|promote|history`: the published versions, the LATEST pointer and its moves."""
    release = commands.add_parser("release", help="list released versions, re-point LATEST (rollback), its history",
                                  epilog=RELEASE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    ls = actions.add_parser(
        "ls", help="versions under releases/ with metrics and released_at, LATEST marked (a table; JSON when piped)",
        description="Print each model's versions, oldest first: a table on a terminal, and with --json (or when "
        "stdout is not a terminal, as scripts read it) the JSON {store, models: {model: {latest, versions: "
        "[{version, uri, released_at, metrics, latest, complete}]}}}. complete=false: a publication that never "
        "finished (no manifest), or one whose objects are not all there at the sizes its manifest records "
        "(damaged: file → what is wrong); --verify checks every complete version's files by sha256 too. A store "
        "that does not exist, a URI that is not a store's, or an unknown --model exits 2 naming it.",
        epilog=RELEASE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ls.add_argument("--model", default=None, metavar="M",
                    help="only this model (its name under releases/: one path segment, [A-Za-z0-9._-]+)")
    ls.add_argument("--json", action="store_true", help="JSON, also on a terminal")
    ls.add_argument("--table", action="store_true", help="the table, also when stdout is not a terminal")
    ls.add_argument("--verify", action="store_true",
                    help="check each complete version's files by content (sha256) as well as size: reads them all")
    ls.add_argument("--at", default=None, metavar="TIME",
                    help="instead: what LATEST of --model was at TIME (ISO 8601, UTC unless an offset is given), "
                    "from its recorded moves (see `release history`)")
    promote = actions.add_parser(
        "promote", help="point LATEST at an existing, complete version (also backwards: a rollback)",
        description="Re-point releases/<model>/LATEST at VERSION by compare-and-swap. VERSION must be published "
        "completely (its manifest.json and every file it lists, at the recorded size). Releases published before "
        "the promotion never move LATEST past it; a newer release moves it on as usual. Prints the new pointer. "
        "The move is recorded (`release history`: promoted by <user>@<host>, --reason) and the event "
        "sknet.release.promoted is posted to $PREFECT_API_URL/events (with PREFECT_API_KEY or "
        "PREFECT_API_AUTH_STRING) when PREFECT_API_URL is set; the output's `event` says whether it was received.",
        epilog=RELEASE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    promote.add_argument("--model", required=True, metavar="M",
                         help="the model's name under releases/ (one path segment, [A-Za-z0-9._-]+)")
    promote.add_argument("--version", required=True, metavar="V",
                         help="the version to point LATEST at (one path segment, [A-Za-z0-9._-]+)")
    promote.add_argument("--reason", default=None, metavar="TEXT",
                         help="why, recorded in the release history after \"promoted by <user>@<host>\" (one line)")
    for parser in (ls, promote, _add_history_command(actions)):
        parser.add_argument("--store", required=True, metavar="URI",
                            help="where runs/ and releases/ are (storage.uri): s3://bucket/prefix or file:///path")
        _add_storage_args(parser)


def _add_history_command(actions: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`sknet release history`: every recorded move of LATEST."""
    history = actions.add_parser(
        "history", help="every recorded move of LATEST, oldest first: when, from → to, why, metrics, run URL",
        description="Print the moves of releases/<model>/LATEST (releases and promotions), oldest first, one a "
        "line; --json: one JSON object per line ({sequence, from, to, why, when, metrics, run_url, …}). History "
        "starts at the first move recorded (LATEST moves before the trail existed are not known).",
        epilog=RELEASE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument("--model", required=True, metavar="M",
                         help="the model's name under releases/ (one path segment, [A-Za-z0-9._-]+)")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    return history


def _release_command(args: argparse.Namespace) -> dict | None:
    from sknet.release import check_segment, list_releases, promote
    from sknet.storage import open_store

    if args.model is not None:
        from sknet.plan import release_name

        args.model = release_name(check_segment("--model", args.model))  # sknet_tiny (model.name) = sknet-tiny
    if args.release_command == "promote":
        check_segment("--version", args.version)
    at = _release_time(args)
    store = open_store(_release_store_uri(args.store), endpoint_url=args.endpoint_url, region=args.region)
    if args.release_command == "history" or at is not None:
        return _release_history(store, args.model, at, args)
    if args.release_command == "ls":
        listing = {"store": store.uri, "models": list_releases(store, args.model, verify=args.verify)}
        if args.model and not listing["models"][args.model]["versions"]:
            known = ", ".join(list_releases(store)) or "none"
            raise SknetError(f"no release of model {args.model!r} in {store.uri} (models there: {known})")
        if not listing["models"]:
            print(f"sknet: note: no releases in {store.uri}", file=sys.stderr)
        if args.json or (not args.table and not sys.stdout.isatty()):
            return listing
        print(release_table(listing))
        return None
    pointer = promote(store, args.model, args.version, reason=args.reason)
    return {**pointer, "event": _announce(store.uri, args.model, pointer)}


def _config_show(cfg: Config) -> None:
    """`sknet config show`: both digests, each labelled, then the resolved YAML."""
    from sknet.training.run_record import recipe_digest

    print(f"# digest: {cfg.digest()} (the resolved config: every key below, paths included)\n"
          f"# recipe digest: {recipe_digest(cfg)} (what decides the weights: the same for every run of this "
          f"config, wherever it runs)\n{cfg.to_yaml()}", end="")


def _release_store_uri(uri: str) -> str:
    """`--store` as `open_store` takes it, refused unless it names a store that can be there: s3://bucket[/prefix],
    file:///path or an existing local directory (`s3:/bad` is no local path anyone meant)."""
    from sknet.storage import FILE_SCHEME, S3_SCHEME, file_uri_path

    if uri.startswith(S3_SCHEME):
        if not uri[len(S3_SCHEME):].partition("/")[0]:
            raise SknetError(f"--store {uri!r}: no bucket (expected s3://bucket/prefix)")
        return uri
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri) and not uri.startswith(FILE_SCHEME):
        raise SknetError(f"--store {uri!r}: not a store URI (expected s3://bucket/prefix, file:///path or a local "
                         "directory)")
    path = Path(file_uri_path(uri) if uri.startswith(FILE_SCHEME) else uri)
    if not path.is_dir():
        raise SknetError(f"--store {uri!r}: {path} is not a directory (no such store)")
    return uri


def release_table(listing: dict) -> str:
    """`release ls` for people: one line a version (LATEST marked), metrics rounded, what is damaged named."""
    rows = [("model", "version", "released at", "top-1", "top-5", "state")]
    for model, found in listing["models"].items():
        for v in found["versions"]:
            metrics = v.get("metrics") or {}
            state = ("LATEST" if v["latest"] else "") if v["complete"] else \
                "damaged: " + ", ".join(v.get("damaged") or {}) if v.get("damaged") else "incomplete"
            rows.append((model, v["version"], str(v.get("released_at") or "—"), _percent(metrics.get(
                "top_1_accuracy")), _percent(metrics.get("top_5_accuracy")), state or "complete"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows)
    return "\n".join(lines)


def _percent(value) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, (int, float)) and value == value else "—"


def _release_time(args: argparse.Namespace):
    """`release ls --at`'s time, checked before the store is opened; None without --at."""
    from sknet.release.history import parse_time

    if getattr(args, "at", None) is None:
        return None
    if args.model is None:
        raise SknetError("release ls --at: name the model (--model M): the time is looked up in its history")
    return parse_time(args.at)


def _release_history(store, model: str, at, args: argparse.Namespace) -> dict | None:
    """`release history` (printed here, one move a line) or `release ls --at` (LATEST at that time, as JSON)."""
    from sknet.jsonio import dumps
    from sknet.release import history
    from sknet.release.history import latest_at, render

    records, notes = history(store, model)
    for note in notes or ([] if records else [f"no release of {model} in {store.uri}"]):
        print(f"sknet: note: {note}", file=sys.stderr)
    if at is not None:
        record = latest_at(records, at, model)
        return {"store": store.uri, "model": model, "at": at.isoformat(), "latest": record["to"],
                "since": record["when"], "move": record}
    for record in records:
        print(dumps(record, sort_keys=True) if args.json else render(record))
    return None


def _announce(store_uri: str, model: str, pointer: dict) -> dict:
    """Send `sknet.release.promoted` for the promotion that wrote `pointer`; what happened goes to the output (and
    to stderr when nothing was received)."""
    from sknet.release.events import release_event, send_event

    status = send_event(release_event(store_uri, model, pointer), occurred=pointer["move"]["when"])
    if not status["sent"]:
        print(f"sknet: note: {status['event']}: {status['detail']}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
    )
    from sknet.jsonio import dumps
    from sknet.preflight.runner import PreflightFailed
    from sknet.release.gate import GateFailed
    from sknet.training.stopping import DIVERGED_EXIT_CODE, Diverged, Preempted

    try:
        result = _run(args)
    except (GateFailed, PreflightFailed) as exc:
        print(f"sknet: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:
        print(f"sknet: {exc}", file=sys.stderr)
        return 128 + 15  # the conventional status of a process ended by SIGTERM
    except Diverged as exc:
        print(f"sknet: error: {exc}", file=sys.stderr)
        return DIVERGED_EXIT_CODE
    except SknetError as exc:
        print(f"sknet: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        print(dumps(result, indent=2))
    return 0


def _run(args: argparse.Namespace) -> dict | None:
    if args.command == "data":
        from sknet.data import verify_layout, write_synthetic_layout
        from sknet.storage import is_object_store_uri

        if args.data_command == "synth":
            path = write_synthetic_layout(args.out, seed=args.seed, overwrite=args.force)
            return {**verify_layout(path).to_dict(), "seed": args.seed}
        if args.data_command == "verify" and not is_object_store_uri(args.path):
            return verify_layout(args.path).to_dict()
        return _data_storage_command(args)

    if args.command == "ranktable":
        return _ranktable(args)
    if args.command == "release":
        return _release_command(args)

    from sknet.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.command == "config":
        return _config_show(cfg)
    if args.command in ("train", "launch") and args.fresh and not getattr(args, "dry_run", False):
        from sknet.training.run_record import move_aside

        if (moved := move_aside(cfg.train.output_dir)) is not None:
            logging.getLogger("sknet").warning("--fresh: the previous run is kept in %s", moved)
    if args.command == "train":
        from sknet.training.loop import train

        return train(cfg).to_dict()
    if args.command == "launch":
        from sknet.launch.launcher import dry_run, launch

        if args.dry_run:
            return dry_run(cfg)
        return launch(cfg, on_line=lambda line: print(line, file=sys.stderr, flush=True)).to_dict()
    if args.command == "gate":
        from sknet.release.gate import enforce, gate

        verdict = gate(_read_json(args.metrics), metric=cfg.gate.metric, threshold=cfg.gate.threshold,
                       champion_metrics=_read_json(args.champion) if args.champion else None,
                       margin=cfg.gate.margin)
        print(json.dumps(verdict.to_dict(), indent=2))
        enforce(verdict)
        return None
    if args.command == "preflight":
        return _preflight(cfg, args)
    if args.command == "eval":
        from sknet.evaluation.evaluate import evaluate

        return evaluate(cfg, args.checkpoint, predictions_out=args.predictions)
    if args.command == "export":
        from sknet.export import export_checked_against_checkpoint, export_mindir

        export = export_checked_against_checkpoint if args.score else export_mindir
        return export(cfg, args.checkpoint, args.out, dynamic_batch=args.dynamic_batch)
    raise AssertionError(f"unhandled command {args.command}")


def _data_storage_command(args: argparse.Namespace) -> dict:

    from sknet.data import stage as staging
    from sknet.storage import open_store

    def store_for(uri: str):
        return open_store(uri, endpoint_url=args.endpoint_url, region=args.region)

    if args.data_command == "stage":
        return staging.stage_dataset(args.source, store_for(args.dest), expected_md5=args.expected_md5,
                                     max_class_skew=args.max_class_skew, allow_skew=args.allow_skew).to_dict()
    uri = args.uri if args.data_command == "fetch" else args.path
    store = store_for(staging.split_dataset_uri(uri)[0])
    if args.data_command == "fetch":
        path, digest = staging.fetch(uri, store, Path(args.cache))
        return {"path": str(path), "digest": digest}
    return staging.verify_remote(uri, store)


def _ranktable(args: argparse.Namespace) -> dict:
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


def _preflight(cfg: Config, args: argparse.Namespace) -> None:
    """The table on stderr as the checks finish, the JSON report on stdout; `PreflightFailed` if one failed."""
    from sknet.jsonio import dumps
    from sknet.preflight.registry import run_preflight
    from sknet.preflight.runner import TABLE_HEADER, enforce, format_row, summary

    print(TABLE_HEADER, file=sys.stderr, flush=True)
    report = run_preflight(cfg, args.work, quick=args.quick, hccn_conf=args.hccn_conf,
                           on_result=lambda result: print(format_row(result), file=sys.stderr, flush=True),
                           on_start=lambda check: print(f"{check.name:<14} …      (running: a slow check, minutes on "
                                                        "Ascend)", file=sys.stderr, flush=True))
    print(summary(report), file=sys.stderr)
    print(dumps(report, indent=2))
    enforce(report)


def _read_json(path: str) -> dict:

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SknetError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SknetError(f"{path}: not valid JSON ({exc})") from None
