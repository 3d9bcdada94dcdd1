"""`sknet config show`, `train`, `launch`, `gate`, `eval`, `export`: a run's stages by hand."""

from __future__ import annotations

import argparse
import json
import sys

from sknet.cli.common import add_config_args, add_fresh_arg, config_of, fresh_start, read_json


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_config_command(commands)
    _add_training_commands(commands)
    _add_checking_commands(commands)


def _stage(commands: argparse._SubParsersAction, name: str, handler, help: str, epilog: str,
           *, checkpoint: bool = False) -> argparse.ArgumentParser:
    """A stage's command: its config arguments (and `--checkpoint`), run by `handler`."""
    parser = commands.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    if checkpoint:
        parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .ckpt written by sknet train")
    parser.set_defaults(handler=handler)
    return parser


def _add_config_command(commands: argparse._SubParsersAction) -> None:
    """`sknet config show`: the resolved config and its digest."""
    config = commands.add_parser("config", help="show the resolved config and its digest")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    _stage(config_commands, "show", run_config_show, "print the resolved YAML and digest",
           "example: sknet config show --config cpu-smoke --set train.epochs=1")


def _add_training_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet train` (one rank) and `sknet launch` (all ranks, supervised)."""
    train = _stage(commands, "train", run_train, "train one rank (resumes from the newest checkpoint in "
                   "train.output_dir)", "example: sknet train --config cpu-smoke --set data.uri=work/data "
                   "train.output_dir=work/runs/smoke")
    add_fresh_arg(train)
    launch = _stage(commands, "launch", run_launch, "start and supervise all ranks of a run (launch.backend: cpu, "
                    "ascend, msrun)", "examples:\n"
                    "  sknet launch --config cpu-smoke --set launch.ranks=2 data.uri=work/data "
                    "train.output_dir=work/runs/dp2\n"
                    "  sknet launch --dry-run --config cifar10-ascend8 --set launch.rank_table=rank_table_16p.json "
                    "launch.ranks=16")
    add_fresh_arg(launch)
    launch.add_argument("--dry-run", action="store_true",
                        help="print, as JSON, the step plan and every process this host would start (ranks, device "
                        "id, command, environment with secrets masked) and start nothing")


def _add_checking_commands(commands: argparse._SubParsersAction) -> None:
    """`sknet gate` (pass/fail on metrics), `sknet eval` (a checkpoint scored), `sknet export` (MINDIR, checked)."""
    gate = _stage(commands, "gate", run_gate, "pass/fail a model on its metrics (gate.metric ≥ gate.threshold, "
                  "optionally ≥ champion + margin)", "example: sknet eval … > metrics.json; sknet gate --config "
                  "cpu-smoke --metrics metrics.json")
    gate.add_argument("--metrics", required=True, metavar="FILE", help="JSON written by `sknet eval`")
    gate.add_argument("--champion", metavar="FILE", help="metrics of the current release to beat")
    evaluate = _stage(commands, "eval", run_eval, "top-1/top-5, per-class accuracy, confusion matrix and loss of a "
                      "checkpoint, printed as JSON", "example: sknet eval --config cpu-smoke --set "
                      "data.uri=work/data --checkpoint RUN/checkpoints/step-00000060.ckpt", checkpoint=True)
    evaluate.add_argument("--predictions", metavar="FILE",
                          help="also write each sample's label and top-1 prediction here (JSON, in eval order)")
    export = _stage(commands, "export", run_export, "write MINDIR and check that it round-trips (--score: and that "
                    "it scores as its checkpoint)", "example: sknet export --config cpu-smoke --set "
                    "data.uri=work/data --checkpoint CKPT --out work/model.mindir --dynamic-batch --score",
                    checkpoint=True)
    export.add_argument("--out", required=True, metavar="FILE.mindir", help="where to write the model")
    export.add_argument("--dynamic-batch", action="store_true", default=None,
                        help="leave the batch dimension free (default: export.dynamic_batch, static "
                        "export.batch_size)")
    export.add_argument("--score", action="store_true",
                        help="also score the checkpoint and the MINDIR (nn.GraphCell) on the eval set (data.uri), "
                        "as the flow does; a MINDIR whose top-1 differs by more than export.accuracy_tolerance is "
                        "refused and removed")


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
    from sknet.release.gate import GatePolicy, enforce

    champion = read_json(args.champion) if args.champion else None
    verdict = GatePolicy.of(config_of(args).gate).judge(read_json(args.metrics), champion_metrics=champion)
    print(json.dumps(verdict.to_dict(), indent=2))
    enforce(verdict)


def run_eval(args: argparse.Namespace) -> dict:
    from sknet.evaluation.evaluate import evaluate

    return evaluate(config_of(args), args.checkpoint, predictions_out=args.predictions)


def run_export(args: argparse.Namespace) -> dict:
    from sknet.export import export_checked_against_checkpoint, export_mindir

    export = export_checked_against_checkpoint if args.score else export_mindir
    return export(config_of(args), args.checkpoint, args.out, dynamic_batch=args.dynamic_batch)
