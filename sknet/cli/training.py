"""`sknet config show`, `train`, `launch`, `gate`, `eval`, `export`: a run's stages by hand."""

from __future__ import annotations

import argparse
import json
import sys

from sknet.cli.common import add_config_args, add_fresh_arg, config_of, fresh_start, read_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_config_command(commands)
    _add_training_commands(commands)
    _add_gate_command(commands)
    _add_eval_command(commands)
    _add_export_command(commands)


def _add_config_command(commands: argparse._SubParsersAction) -> None:
    """`sknet config show`: the resolved config and its digest."""
    config = commands.add_parser("config", help="show the resolved config and its digest")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser(
        "show", help="print the resolved YAML and digest",
        epilog="example: sknet config show --config cpu-smoke --set train.epochs=1",
    )
    add_config_args(show)
    show.set_defaults(handler=run_config_show)


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet train` (one rank) and `sknet launch` (all ranks, supervised)."""
    train = commands.add_parser(
        "train", help="train one rank (resumes from the newest checkpoint in train.output_dir)",
        epilog="example: sknet train --config cpu-smoke --set data.uri=work/data train.output_dir=work/runs/smoke",
    )
    add_config_args(train)
    add_fresh_arg(train)
    train.set_defaults(handler=run_train)

    launch = commands.add_parser(
        "launch", help="start and supervise all ranks of a run (launch.backend: cpu, ascend, msrun)",
        epilog="examples:\n"
        "  sknet launch --config cpu-smoke --set launch.ranks=2 data.uri=work/data train.output_dir=work/runs/dp2\n"
        "  sknet launch --dry-run --config cifar10-ascend8 --set launch.rank_table=rank_table_16p.json "
        "launch.ranks=16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(launch)
    add_fresh_arg(launch)
    launch.add_argument("--dry-run", action="store_true",
                        help="print, as JSON, every process this host would start (ranks, device id, command, "
                        "environment with secrets masked) and start nothing")
    launch.set_defaults(handler=run_launch)


def _add_gate_command(commands: argparse._SubParsersAction) -> None:
    """`sknet gate`: pass/fail on eval metrics."""
    gate = commands.add_parser(
        "gate", help="pass/fail a model on its metrics (gate.metric ≥ gate.threshold, optionally ≥ champion + margin)",
        epilog="example: sknet eval … > metrics.json; sknet gate --config cpu-smoke --metrics metrics.json",
    )
    add_config_args(gate)
    gate.add_argument("--metrics", required=True, metavar="FILE", help="JSON written by `sknet eval`")
    gate.add_argument("--champion", metavar="FILE", help="metrics of the current release to beat")
    gate.set_defaults(handler=run_gate)


def _add_eval_command(commands: argparse._SubParsersAction) -> None:
    """`sknet eval`: accuracy and loss of a checkpoint."""
    evaluate = commands.add_parser(
        "eval", help="top-1/top-5, per-class accuracy, confusion matrix and loss of a checkpoint, printed as JSON",
        epilog="example: sknet eval --config cpu-smoke --set data.uri=work/data "
               "--checkpoint RUN/checkpoints/step-00000060.ckpt",
    )
    add_config_args(evaluate)
    evaluate.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .ckpt written by sknet train")
    evaluate.add_argument("--predictions", metavar="FILE",
                          help="also write each sample's label and top-1 prediction here (JSON, in eval order)")
    evaluate.set_defaults(handler=run_eval)


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    """`sknet export`: MINDIR with a round-trip check."""
    export = commands.add_parser(
        "export", help="write MINDIR and check that it round-trips (--score: and that it scores as its checkpoint)",
        epilog="example: sknet export --config cpu-smoke --set data.uri=work/data --checkpoint CKPT "
               "--out work/model.mindir --dynamic-batch --score",
    )
    add_config_args(export)
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
    export.set_defaults(handler=run_export)


def run_config_show(args: argparse.Namespace) -> None:
    """`sknet config show`: both digests, each labelled, then the resolved YAML."""
    from sknet.training.run_record import recipe_digest

    cfg = config_of(args)
    print(f"# digest: {cfg.digest()} (the resolved config: every key below, paths included)\n"
          f"# recipe digest: {recipe_digest(cfg)} (what decides the weights: the same for every run of this "
          f"config, wherever it runs)\n{cfg.to_yaml()}", end="")


def run_train(args: argparse.Namespace) -> dict:
    from sknet.training.loop import train

    cfg = config_of(args)
    fresh_start(cfg, args)
    return train(cfg).to_dict()


def run_launch(args: argparse.Namespace) -> dict:
    from sknet.launch.launcher import dry_run, launch

    cfg = config_of(args)
    if args.dry_run:
        return dry_run(cfg)
    fresh_start(cfg, args)
    return launch(cfg, on_line=lambda line: print(line, file=sys.stderr, flush=True)).to_dict()


def run_gate(args: argparse.Namespace) -> None:
    from sknet.release.gate import enforce, gate

    cfg = config_of(args)
    verdict = gate(read_json(args.metrics), metric=cfg.gate.metric, threshold=cfg.gate.threshold,
                   champion_metrics=read_json(args.champion) if args.champion else None, margin=cfg.gate.margin)
    print(json.dumps(verdict.to_dict(), indent=2))
    enforce(verdict)


def run_eval(args: argparse.Namespace) -> dict:
    from sknet.evaluation.evaluate import evaluate

    return evaluate(config_of(args), args.checkpoint, predictions_out=args.predictions)


def run_export(args: argparse.Namespace) -> dict:
    from sknet.export import export_checked_against_checkpoint, export_mindir

    export = export_checked_against_checkpoint if args.score else export_mindir
    return export(config_of(args), args.checkpoint, args.out, dynamic_batch=args.dynamic_batch)
