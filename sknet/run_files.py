"""The files of a run directory (`train.output_dir`), named once.

    run.json         the training-relevant settings of the run this directory holds (run_record)
    config.yaml      the resolved config the ranks were started with (launcher)
    launch.json      the launcher's result: backend, exit codes, failed rank (launcher)
    metrics.jsonl    one JSON record per logged step and per epoch (rank 0)
    result.json      rank 0's training result (train)
    rank-N.json      each rank's shard and parameter digest (train)
    eval.json        evaluation metrics, per-class accuracy and confusion matrix (flow)
    predictions.json each eval sample's label and top-1 prediction, in eval order (flow)
    champion/        LATEST's checkpoint and predictions on the same samples (gate.compare_to_latest)
    curve.png        the training curve (flow)
    confusion.png    the confusion matrix of the evaluation (flow)
    model.mindir     the exported model (flow)
    checkpoints/     step-NNNNNNNN.ckpt files (checkpoint)
    logs/            rank-N.log, one per rank (launcher)
    ranks/           rank-N/: each rank's working directory (compiler and amp scratch files)
    compile-cache/   MindSpore's compile cache: a resumed or retried run loads the graph instead of compiling it
    .mirror-spool/   checkpoints waiting for their background upload to train.checkpoint_mirror
"""

from __future__ import annotations

RUN_RECORD_FILE = "run.json"
CONFIG_FILE = "config.yaml"
LAUNCH_FILE = "launch.json"
METRICS_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"
EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.json"
CHAMPION_DIR = "champion"
CURVE_FILE = "curve.png"
CONFUSION_FILE = "confusion.png"
RELIABILITY_FILE = "reliability.png"
MODEL_FILE = "model.mindir"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
RANKS_DIR = "ranks"
COMPILE_CACHE_DIR = "compile-cache"
MIRROR_SPOOL_DIR = ".mirror-spool"  # checkpoint snapshots waiting for their upload


def rank_record_file(rank: int) -> str:
    return f"rank-{rank}.json"


def rank_log_file(rank: int | str) -> str:
    return f"rank-{rank}.log"
