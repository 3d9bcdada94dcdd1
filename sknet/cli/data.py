"""`sknet data synth|verify|stage|fetch`: the CIFAR-10 layout, local and staged."""

from __future__ import annotations

import argparse
from pathlib import Path

from sknet.cli.common import add_storage_args


def add_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet data synth|verify|stage|fetch`: the CIFAR-10 layout, local and staged."""
    data = commands.add_parser("data", help="CIFAR-10 binary layout: synth, verify, stage, fetch")
    data.set_defaults(handler=run_data)
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
    add_storage_args(verify)
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
    add_storage_args(stage)
    fetch = data_commands.add_parser(
        "fetch", help="download a staged dataset into a verified local cache (no-op when cached)",
        epilog="example: sknet data fetch s3://my-bucket/datasets/cifar10/<digest> --cache work/cache",
    )
    fetch.add_argument("uri", metavar="URI", help="a dataset URI printed by `sknet data stage`")
    fetch.add_argument("--cache", default="work/cache", metavar="DIR", help="cache directory (default work/cache)")
    add_storage_args(fetch)


def run_data(args: argparse.Namespace) -> dict:
    """`sknet data synth|verify|stage|fetch`."""
    from sknet.data import verify_layout, write_synthetic_layout
    from sknet.storage import is_object_store_uri

    if args.data_command == "synth":
        path = write_synthetic_layout(args.out, seed=args.seed, overwrite=args.force)
        return {**verify_layout(path).to_dict(), "seed": args.seed}
    if args.data_command == "verify" and not is_object_store_uri(args.path):
        return verify_layout(args.path).to_dict()
    return _data_storage_command(args)


def _data_storage_command(args: argparse.Namespace) -> dict:

    from sknet.data import stage as staging
    from sknet.data.cache import fetch, verify_remote
    from sknet.data.manifest import split_dataset_uri
    from sknet.storage import open_store

    def store_for(uri: str):
        return open_store(uri, endpoint_url=args.endpoint_url, region=args.region)

    if args.data_command == "stage":
        return staging.stage_dataset(args.source, store_for(args.dest), expected_md5=args.expected_md5,
                                     max_class_skew=args.max_class_skew, allow_skew=args.allow_skew).to_dict()
    uri = args.uri if args.data_command == "fetch" else args.path
    store = store_for(split_dataset_uri(uri)[0])
    if args.data_command == "fetch":
        path, digest = fetch(uri, store, Path(args.cache))
        return {"path": str(path), "digest": digest}
    return verify_remote(uri, store)
