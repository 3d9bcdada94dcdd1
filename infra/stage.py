"""`make stage SOURCE=… [DEST=…]`: stage a dataset through the `sknet-stage/manual` deployment of the local
stack (`make up`) and wait for it. A newly staged (or repaired) dataset emits `sknet.dataset.staged`, which starts a
`sknet-train` run on it (the smoke deployment on a laptop: `make up` pauses nightly's trigger).

    python -m infra.stage --source work/data/seed7            # a layout directory (`sknet data synth`)
    python -m infra.stage --source cifar-10-binary.tar.gz --dest s3://my-bucket/datasets/cifar10
    python -m infra.stage --source work/data/thinned --allow-skew   # stage a skewed dataset anyway
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from infra.stack import REPO, add_stack_arguments, stack_from

DEPLOYMENT = "sknet-stage/manual"


def stage_command(source: str, dest: str | None, max_class_skew: float | None = None,
                  allow_skew: bool = False) -> list[str]:
    """The `prefect deployment run` that stages SOURCE (a URL, or an absolute path: the worker has its own cwd);
    `--param` values are read as JSON (`true`, `0.2`)."""
    params = ["--param", f"source={source}", *(["--param", f"dest={dest}"] if dest else []),
              *(["--param", f"max_class_skew={max_class_skew!r}"] if max_class_skew is not None else []),
              *(["--param", "allow_skew=true"] if allow_skew else [])]
    return [sys.executable, "-m", "prefect", "deployment", "run", DEPLOYMENT, *params, "--watch"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="the official tarball's URL, a tarball, or a layout directory (`sknet data synth --out`)")
    parser.add_argument("--dest", default=None,
                        help="datasets prefix, e.g. s3://bucket/datasets/cifar10 (default: the stack's store)")
    parser.add_argument("--max-class-skew", type=float, default=None, metavar="FRACTION",
                        help="refuse a class off its split's mean count by more than this fraction (default 0.1)")
    parser.add_argument("--allow-skew", action="store_true", help="stage a skewed dataset anyway")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    stack = stack_from(args, recorded=True)  # the running stack, on whatever port it was started
    if not stack.healthy():
        print(f"make stage: error: no Prefect server answers at {stack.api_url}; start the stack with `make up` "
              "(or set SKNET_PREFECT_PORT to its port)", file=sys.stderr)
        return 2
    source = args.source if args.source.startswith(("http://", "https://")) else Path(args.source).resolve()
    if isinstance(source, Path) and not source.exists():
        print(f"make stage: error: SOURCE {args.source}: no such file or directory; expected a layout directory, "
              "a tarball or a URL", file=sys.stderr)
        return 2
    command = stage_command(str(source), args.dest, args.max_class_skew, args.allow_skew)
    return subprocess.run(command, cwd=REPO, env=stack.env()).returncode


if __name__ == "__main__":
    sys.exit(main())
