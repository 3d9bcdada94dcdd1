"""The `sknet` command: every pipeline stage, runnable by hand without Prefect.

One module per command group (`data`, `ranktable`, `training`: config show, train, launch, gate, eval, export;
`preflight`, `release`), each registering its commands with a handler (`set_defaults(handler=…)`); `main` runs
the handler and maps the outcome to an exit code. Logs go to stderr; machine-readable results (JSON) to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sknet.cli import data, preflight, ranktable, release, training
from sknet.cli.release import release_table
from sknet.errors import SknetError

__all__ = ["build_parser", "main", "release_table"]

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sknet", description="Train, evaluate and export SKNet-50 on CIFAR-10 (Ascend, GPU or CPU).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (data, ranktable, training, release, preflight):  # the order `sknet --help` lists them
        group.add_commands(commands)
    return parser


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
        result = args.handler(args)
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
