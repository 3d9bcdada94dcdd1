"""What the command groups share: the config and storage arguments, loading the config, reading JSON."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sknet.errors import SknetError


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="NAME|PATH",
        help="a shipped profile (cifar10-ascend8, cpu-smoke) or a YAML file",
    )
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="dotted overrides applied after the profile, e.g. --set train.epochs=1 data.uri=work/data",
    )


def add_fresh_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fresh", action="store_true",
                        help="start over: move an existing train.output_dir aside to <dir>.replaced-<time> "
                        "(kept, never deleted) instead of resuming from it")


def add_storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", default=None, metavar="URL",
                        help="S3 endpoint for MinIO / Huawei OBS (default: AWS, or AWS_ENDPOINT_URL)")
    parser.add_argument("--region", default=None, help="S3 region (default: the boto3 chain's)")


def config_of(args: argparse.Namespace):
    """The config `--config` and `--set` resolve to (`ConfigError` naming what is wrong)."""
    from sknet.config import load_config

    return load_config(args.config, args.overrides)


def fresh_start(cfg, args: argparse.Namespace) -> None:
    """--fresh: move an existing train.output_dir aside (kept, renamed) before a run starts there."""
    from sknet.training.run_record import move_aside

    if args.fresh and not getattr(args, "dry_run", False) and (moved := move_aside(cfg.train.output_dir)) is not None:
        logging.getLogger("sknet").warning("--fresh: the previous run is kept in %s", moved)


def read_json(path: str) -> dict:

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SknetError(f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise SknetError(f"{path}: not valid JSON ({exc})") from None
