"""`make run`: the sknet-train flow end to end on the embedded default.

The embedded default is a `file://` object store under `work/store`, CPU ranks and the `cpu-smoke`
profile. The flow reports to the local stack's API when `make up` is running, and to a temporary local
Prefect API otherwise. Without a real CIFAR-10 in the store it says so and trains on a synthetic layout,
labelled SYNTHETIC everywhere; `--data cifar10` (`make run DATA=cifar10`) stages the real one first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path

from infra.stack_record import running_stack_api
from sknet.data.layout import TARBALL_URL, verify_layout
from sknet.data.manifest import DATASETS_PREFIX
from sknet.data.stage import stage, staged_datasets
from sknet.data.synth import write_synthetic_layout
from sknet.errors import DataError, SknetError
from sknet.storage import LocalStore
from sknet.storage.locks import LockBusy, exclusive_lock

REPO = Path(__file__).resolve().parent.parent
EPILOG = """examples:
  python -m infra.run_local                          # synthetic data unless a real CIFAR-10 is staged
  python -m infra.run_local --data cifar10           # download and stage the official tarball first
  python -m infra.run_local --set train.epochs=1 --gate-threshold 0.2
"""

log = logging.getLogger("sknet.run_local")
WORK_LOCK = ".sknet-work.lock"  # held by `make run` and `make up`: see lock_work_dir


class WorkDirBusy(SknetError):
    """Another `make run` or `make up` is using the work dir."""


def embedded_dataset(data: str, store_root: Path, work: Path) -> dict:
    """A dataset staged in the embedded store `<store_root>/datasets/cifar10`: uri, synthetic.

    `data`: "cifar10" stages the official tarball; "auto" takes a staged real CIFAR-10 if there is one;
    otherwise (and for "synthetic") a synthetic layout is generated once under `<work>/data/synthetic`
    and staged, with a plain warning that the run will not use real data.
    """
    datasets = LocalStore(store_root / DATASETS_PREFIX)
    work.mkdir(parents=True, exist_ok=True)
    if data == "cifar10":
        log.info("staging the real CIFAR-10 from %s into %s", TARBALL_URL, datasets.uri)
        return {"uri": stage(TARBALL_URL, datasets, work_dir=work), "synthetic": False}
    real = [d for d in staged_datasets(datasets) if not d["synthetic"]]
    if real and data == "auto":
        log.info("using the real CIFAR-10 staged at %s", real[0]["uri"])
        return real[0]
    log.warning("no real CIFAR-10 is staged in %s: this run uses a SYNTHETIC layout (random images with "
                "learnable labels; every summary says SYNTHETIC). With network access, `make run DATA=cifar10` "
                "stages the real dataset from the official URL first.", datasets.uri)
    synthetic = work / "data" / "synthetic"
    try:
        verify_layout(synthetic)
    except DataError as exc:
        why = "none there yet" if not synthetic.exists() else f"the one there does not verify ({exc})"
        log.info("generating the synthetic layout in %s (≈184 MB, ≈10 s): %s", synthetic, why)
        write_synthetic_layout(synthetic, seed=0, overwrite=True)
    return {"uri": stage(str(synthetic), datasets, work_dir=work), "synthetic": True}


def run_holding_work_dir(program: str, work: Path, elsewhere: str, run: Callable[[], int]) -> int:
    """`run()` while holding the work dir's lock; exit status 2 with a message if another holds it."""
    with ExitStack() as held:
        try:
            lock_work_dir(held, work, elsewhere)
        except WorkDirBusy as exc:
            print(f"{program}: error: {exc}", file=sys.stderr)
            return 2
        return run()


def lock_work_dir(held: ExitStack, work: Path, elsewhere: str) -> None:
    """Hold `<work>/.sknet-work.lock` until `held` closes, or raise `WorkDirBusy` naming its holder.

    `make run` holds it for the whole run and `make up` while it sets the stack up: two of them in one
    work dir would regenerate, stage and serve the same files and share one Prefect database. It is a
    flock, so a holder that died (even by SIGKILL) holds nothing: there is no stale lock to remove.
    `elsewhere` says how to use another work dir.
    """
    try:
        held.enter_context(exclusive_lock(work / WORK_LOCK, wait=False))
    except LockBusy as exc:
        raise WorkDirBusy(f"work dir {work} is in use by {exc.holder}. Wait for it to finish or stop it, "
                          f"or use another work dir: {elsewhere}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    work = args.work.resolve()
    return run_holding_work_dir("make run", work, "make run RUN_ARGS='--work DIR'", lambda: _run(args, work))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["auto", "cifar10", "synthetic"], default="auto",
                        help="auto: a staged real CIFAR-10 if there is one, else synthetic (default)")
    parser.add_argument("--config", default="cpu-smoke", help="profile or YAML path (default cpu-smoke)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides")
    parser.add_argument("--gate-threshold", type=float, default=None, help="default: the profile's gate.threshold")
    parser.add_argument("--work", type=Path, default=REPO / "work", help="work dir (default work/, git-ignored)")
    parser.add_argument("--force", action="store_true",
                        help="train even if a release was already trained from the same data, settings and code")
    return parser


def _run(args: argparse.Namespace, work: Path) -> int:
    store_root = work / "store"

    started = time.perf_counter()
    with _sknet_logs_to_stderr():  # inside the flow, Prefect's handlers show them (PREFECT_LOGGING_EXTRA_LOGGERS)
        dataset = embedded_dataset(args.data, store_root, work)
    staging_seconds = round(time.perf_counter() - started, 2)
    api = os.environ.get("PREFECT_API_URL") or running_stack_api(work / "prefect")  # `make up`'s, if it runs
    if api:
        os.environ["PREFECT_API_URL"] = api
    else:  # a temporary server with its own database under work/, given time to migrate on small machines
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect-temporary"))
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sknet")  # sknet's progress lines in the task logs
    print(f"Prefect API: {api or 'a temporary local server'}", flush=True)

    from flows.sknet_train import sknet_train
    from sknet.config import parse_overrides

    state = sknet_train(config=args.config, overrides=parse_overrides(args.set), dataset_uri=dataset["uri"],
                        gate_threshold=args.gate_threshold, publish_to=f"file://{store_root}",
                        work_dir=str(work), force=args.force, return_state=True)
    if not state.is_completed():
        print(f"\nsknet-train ended {state.name}: {state.message}", file=sys.stderr)
        return 1
    print(summary(state.result(), dataset, staging_seconds))
    return 0


@contextmanager
def _sknet_logs_to_stderr():
    logger = logging.getLogger("sknet")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def summary(result: dict, dataset: dict, staging_seconds: float) -> str:
    stages = {"stage dataset": staging_seconds, **result["stage_seconds"]}
    seconds = "  seconds   " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in stages.items())
    if result.get("unchanged_since"):
        return "\n".join(["", f"sknet-train: unchanged since release {result['unchanged_since']} (same dataset, "
                           "training settings and code): nothing trained, LATEST not moved",
                           "  to train anyway: make run RUN_ARGS=--force", seconds])
    release = result["release"]["uri"].removeprefix("file://")
    metrics = result["metrics"]
    lines = [
        "",
        f"sknet-train completed{' on SYNTHETIC data' if result['synthetic_data'] else ''}",
        f"  dataset   {dataset['uri']}",
        f"  MINDIR    {release}/model.mindir",
        f"  card      {release}/MODEL_CARD.md",
        f"  lineage   {release}/lineage.json",
        f"  metrics   {result['run_uri'].removeprefix('file://')}/eval.json  "
        f"(top-1 {metrics['top_1_accuracy']:.4f}, top-5 {metrics['top_5_accuracy']:.4f})",
        f"  curve     {result['run_uri'].removeprefix('file://')}/curve.png",
        seconds,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
