"""Checkpoint files of a run: `<run>/checkpoints/step-00000040.ckpt`, written atomically, pruned, resumed.

Each checkpoint has a record beside it, `step-00000040.ckpt.sha256` (JSON: step, bytes, sha256), written
before the checkpoint gets its final name. It is checked on resume (the newest checkpoint that verifies is
taken, damaged ones are named and skipped), on pull from the mirror (before anything local is replaced),
before eval and export, and before a release. A sha256 rather than MindSpore's own CRC: it can be checked
without MindSpore, on any copy (the bucket's included), and it is the digest the lineage records.

With a mirror (`train.checkpoint_mirror`), each checkpoint and the metrics log up to it are also copied to
object storage as they are written, so a run retried on another machine resumes from the bucket.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sknet.errors import CheckpointError, ConfigError
from sknet.run_files import CHECKPOINTS_DIR, METRICS_FILE, MIRROR_SPOOL_DIR, RUN_RECORD_FILE
from sknet.storage import StorageError, Store, sha256_file, write_atomic

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.ckpt$")
RECORD_SUFFIX = ".sha256"
# Saved with the optimizer but rebuilt from the config on every start: the per-step learning rates (their
# length is the run's total steps, which may grow when train.epochs does).
RECOMPUTED = ("learning_rate",)


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(output_dir) / f"step-{step:08d}.ckpt"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first; partial files never match the name."""
    directory = checkpoint_dir(output_dir)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    """The newest complete checkpoint by name (not verified: see `latest_verified_checkpoint`)."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def record_path(checkpoint: str | Path) -> Path:
    """The integrity record beside a checkpoint: `<name>.sha256`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + RECORD_SUFFIX)


def write_record(checkpoint: Path, step: int, name: Path | None = None) -> dict:
    """Hash `checkpoint` and write its record (for the file that will be called `name`)."""
    record = {"step": step, "bytes": checkpoint.stat().st_size, "sha256": sha256_file(checkpoint)}
    write_atomic(record_path(name or checkpoint), lambda partial: partial.write_text(json.dumps(record) + "\n"))
    return record


def read_record(path: str | Path) -> dict:
    """A checkpoint's integrity record as written (not checked against the file: see `verify_checkpoint`)."""
    try:
        return checked_record(json.loads(record_path(path).read_text()), str(record_path(path)))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no integrity record {record_path(path).name}; "
                              "it was not written by `sknet train`, or its writing was cut off") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint record {record_path(path)} is not valid JSON ({exc})") from None


def checked_record(record: object, where: str) -> dict:
    """`record` if it is shaped as `write_record` writes it ({"step": int ≥ 0, "bytes": int ≥ 0, "sha256": 64 hex
    digits}); else `CheckpointError` naming `where` (a file, or a mirror's object: input like any other)."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if (not isinstance(record, dict) or not whole(record.get("step")) or not whole(record.get("bytes"))
            or not isinstance(record.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", record["sha256"])):
        shown = json.dumps(record)[:200]
        raise CheckpointError(f"checkpoint record {where} is not one: {shown} (expected {{\"step\": N, \"bytes\": "
                              "N, \"sha256\": \"<64 hex>\"}, as sknet train writes it)")
    return record


def verify_checkpoint(path: str | Path) -> dict:
    """The checkpoint's record, after checking the file against it; `CheckpointError` names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    record = read_record(path)
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CheckpointError(f"checkpoint {path} is damaged: {size:,} bytes, {record['bytes']:,} when written")
    if sha256_file(path) != record["sha256"]:
        raise CheckpointError(f"checkpoint {path} is damaged: its sha256 differs from the one recorded when "
                              "it was written")
    return record


def latest_verified_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    """The newest checkpoint that verifies; damaged ones are named in a warning and skipped.

    None when there is no checkpoint; `CheckpointError` when there are some and none verifies.
    """
    found = list_checkpoints(output_dir)
    problems = []
    for step, path in reversed(found):
        try:
            verify_checkpoint(path)
            return step, path
        except CheckpointError as exc:
            log.warning("skipping a checkpoint: %s", exc)
            problems.append(str(exc))
    if found:
        raise CheckpointError(f"none of the {len(found)} checkpoint(s) in {checkpoint_dir(output_dir)} verifies: "
                              + "; ".join(problems) + ". Start over with another train.output_dir (or --fresh)")
    return None


def save_checkpoint(cell, output_dir: str | Path, step: int, keep: int) -> Path:
    """Save `cell` (network and optimizer state) for `step`, then keep only the newest `keep` files."""
    import mindspore as ms

    final = checkpoint_path(output_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".partial-{final.name}")
    try:
        ms.save_checkpoint(cell, str(partial))  # MindSpore writes `<partial stem>.tmp`, then renames it
        write_record(partial, step, name=final)
    except BaseException:  # a full disk, a signal: leave nothing half-written behind
        for debris in (partial, partial.with_suffix(".tmp")):  # write_record removes its own partial file
            debris.unlink(missing_ok=True)
        raise
    os.replace(partial, final)
    for _, old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
        record_path(old).unlink(missing_ok=True)
    return final


def load_into(cell, path: str | Path, *, what: str = "network", verified: bool = False) -> None:
    """Load every parameter of `cell` from `path`; fail naming the file when one is missing or misshaped.
    The file is checked against its integrity record first, unless the caller just did (`verified`)."""
    import mindspore as ms

    path = Path(path)
    if not verified:
        if record_path(path).exists() or not path.is_file():
            verify_checkpoint(path)
        else:
            log.warning("checkpoint %s has no integrity record (not written by `sknet train`): loading it "
                        "unverified", path)
    try:
        params = ms.load_checkpoint(str(path))
        for name in RECOMPUTED:
            params.pop(name, None)
        missing, _ = ms.load_param_into_net(cell, params)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the {what}: {exc}") from None
    missing = [name for name in missing if name not in RECOMPUTED]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {len(missing)} parameters of the {what} (first: {missing[0]}); "
            "was it trained with another model.name, model.stem or model.num_classes?"
        )


def _step_of(key: str) -> int | None:
    match = _NAME.match(key.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


class CheckpointMirror:
    """A run's checkpoints (with its run record and metrics log) under a store prefix: pushed as written, pulled
    to resume. The run record (`run.json`: the dataset digest and the settings that decide the weights) says
    whose checkpoints they are: a run with another record never pulls them."""

    LOG = METRICS_FILE

    def __init__(self, store: Store):
        self.store = store

    def check_same_run(self, output_dir: str | Path) -> None:
        """Refuse (`ConfigError`, naming each `key: old → new`) to continue a mirrored run with another record."""
        from sknet.training.run_record import checked_run_record, read_run_record, record_differences

        local = Path(output_dir) / RUN_RECORD_FILE
        if not local.exists() or not self.store.exists(RUN_RECORD_FILE):  # a mirror from before records: as is
            return
        where = f"{self.store.uri}/{RUN_RECORD_FILE}"
        try:
            mirrored = checked_run_record(json.loads(self.store.get_bytes(RUN_RECORD_FILE)), where)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: not a run record ({exc})") from None
        differ = record_differences(mirrored, read_run_record(local))
        if differ:
            raise ConfigError(
                f"the checkpoint mirror {self.store.uri} holds another training ({', '.join(differ)}): this run "
                "cannot continue its checkpoints. A run id names one training: use another run id (or "
                "train.checkpoint_mirror), or remove that mirror if its run is abandoned")

    def steps(self) -> list[int]:
        return sorted(step for o in self.store.list() if (step := _step_of(o.key)) is not None)

    def push(self, output_dir: str | Path, step: int, keep: int, *, checkpoint: Path | None = None,
             metrics: Path | None = None) -> None:
        """Upload the checkpoint of `step`, its integrity record, then the metrics log; keep the newest `keep`.
        `checkpoint`/`metrics` are snapshots (the record beside the snapshot) to upload instead of the run
        directory's files."""
        source = checkpoint or checkpoint_path(output_dir, step)
        name = checkpoint_path("", step).name
        if (record := Path(output_dir) / RUN_RECORD_FILE).exists():
            self.store.put(record, RUN_RECORD_FILE)  # whose checkpoints these are, before the first of them
        self.store.put(source, name)
        self.store.put(record_path(source), record_path(name).name)  # last: a checkpoint without it is unfinished
        log_file = metrics or Path(output_dir) / self.LOG
        if log_file.exists():
            self.store.put(log_file, self.LOG)
        for old in self.steps()[:-keep]:
            self.store.delete(checkpoint_path("", old).name)
            self.store.delete(record_path(checkpoint_path("", old)).name)

    def pull(self, output_dir: str | Path) -> int | None:
        """Download the newest mirrored checkpoint that verifies, if it is newer than the local ones; its step,
        or None. A copy is checked against its record before it replaces anything local; a mirror of another
        training (its run record differs from `output_dir`'s) is refused first."""
        self.check_same_run(output_dir)
        local = latest_checkpoint(output_dir)
        for step in reversed(self.steps()):
            if local is not None and local[0] >= step:
                return None
            final = checkpoint_path(output_dir, step)
            final.parent.mkdir(parents=True, exist_ok=True)
            partial = final.with_name(f".partial-pull-{final.name}")
            try:
                self.store.get(checkpoint_path("", step).name, partial)
                self.store.get(record_path(checkpoint_path("", step)).name, record_path(partial))
                verify_checkpoint(partial)
            except (CheckpointError, StorageError) as exc:
                log.warning("mirrored checkpoint of step %d in %s not used: %s", step, self.store.uri, exc)
                partial.unlink(missing_ok=True)
                record_path(partial).unlink(missing_ok=True)
                continue
            os.replace(record_path(partial), record_path(final))  # the record first, as when saving
            os.replace(partial, final)
            if self.store.exists(self.LOG):
                self.store.get(self.LOG, Path(output_dir) / self.LOG)
            return step
        return None


@dataclass
class MirrorStatus:
    """What the mirror holds and what the uploader did: the newest step it holds, the step in flight, the one
    waiting, the snapshots superseded before their upload began, the uploads that failed, and the longest the
    training thread spent in `submit` (a snapshot: hard links and a copy of metrics.jsonl, never a request)."""

    mirrored_step: int | None = None
    uploading_step: int | None = None
    pending_step: int | None = None
    superseded: int = 0
    failed: int = 0
    longest_submit_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class BackgroundUploads:
    """Mirror pushes off the training thread, which never waits on storage: `submit` snapshots a checkpoint (a
    hard link, so pruning cannot take it away) and the metrics log, and returns. One worker thread uploads; ONE
    snapshot waits at most, the newest — a newer checkpoint supersedes a waiting one (counted in `status`), since
    a resume wants only the newest. A slow or hung endpoint so costs mirrored history, never training time, and
    rank 0 never keeps the other ranks waiting in an all-reduce past HCCL_EXEC_TIMEOUT. A step is never uploaded
    twice, a failed upload is a warning (the local checkpoint still allows a resume), and `close` uploads what is
    still waiting (the run's last checkpoint) and says what the mirror holds."""

    def __init__(self, mirror: CheckpointMirror, output_dir: str | Path, keep: int):
        self.mirror, self.output_dir, self.keep = mirror, Path(output_dir), keep
        self.spool = self.output_dir / MIRROR_SPOOL_DIR
        self.submitted: set[int] = set()
        self.state = MirrorStatus()
        self.pending: tuple[int, Path, Path] | None = None
        self.closing = False
        self.changed = threading.Condition()
        self.worker = threading.Thread(target=self._work, name="checkpoint-mirror", daemon=True)
        self.worker.start()

    def submit(self, step: int) -> None:
        """Snapshot the checkpoint of `step` for upload; returns at once (never waits on the uploader)."""
        started = time.perf_counter()
        if step in self.submitted:
            return
        self.submitted.add(step)
        self.spool.mkdir(exist_ok=True)
        snapshot = self.spool / checkpoint_path("", step).name
        snapshot.unlink(missing_ok=True)
        os.link(checkpoint_path(self.output_dir, step), snapshot)
        shutil.copyfile(record_path(checkpoint_path(self.output_dir, step)), record_path(snapshot))
        metrics = self.spool / f"{METRICS_FILE}.{step}"
        if (self.output_dir / METRICS_FILE).exists():
            shutil.copyfile(self.output_dir / METRICS_FILE, metrics)
        with self.changed:
            if self.pending is not None:
                dropped = self.pending[0]
                _remove_spooled(*self.pending[1:])
                self.state.superseded += 1
                log.info("mirror: the checkpoint of step %d is superseded by step %d before its upload began (%d "
                         "superseded so far; the upload of step %s is still running)", dropped, step,
                         self.state.superseded, self.state.uploading_step)
            self.pending = (step, snapshot, metrics)
            self.state.pending_step = step
            self.state.longest_submit_seconds = max(self.state.longest_submit_seconds,
                                                    round(time.perf_counter() - started, 4))
            self.changed.notify_all()

    def status(self) -> MirrorStatus:
        with self.changed:
            return MirrorStatus(**asdict(self.state))

    def _take(self) -> tuple[int, Path, Path] | None:
        with self.changed:
            while self.pending is None and not self.closing:
                self.changed.wait()
            item, self.pending = self.pending, None
            self.state.pending_step = None
            self.state.uploading_step = item[0] if item else None
            return item

    def _work(self) -> None:
        while (item := self._take()) is not None:
            step, snapshot, metrics = item
            try:
                self.mirror.push(self.output_dir, step, self.keep, checkpoint=snapshot, metrics=metrics)
                log.info("mirrored the checkpoint of step %d to %s", step, self.mirror.store.uri)
                with self.changed:
                    self.state.mirrored_step = step
            except (StorageError, OSError) as exc:
                log.warning("checkpoint of step %d kept locally only, mirroring failed: %s", step, exc)
                with self.changed:
                    self.state.failed += 1
            finally:
                _remove_spooled(snapshot, metrics)
                with self.changed:
                    self.state.uploading_step = None

    def close(self) -> None:
        """Upload what is still waiting (the newest checkpoint), then stop the worker and say what the mirror
        holds."""
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.worker.join()
        if not self.submitted:  # every rank has one; the others must not remove rank 0's snapshots
            return
        shutil.rmtree(self.spool, ignore_errors=True)
        state = self.status()
        log.info("mirror %s holds the checkpoint of step %s (%d superseded before upload, %d failed; the training "
                 "thread waited at most %.3f s in a submit)", self.mirror.store.uri, state.mirrored_step,
                 state.superseded, state.failed, state.longest_submit_seconds)

    def __enter__(self) -> BackgroundUploads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_spooled(snapshot: Path, metrics: Path) -> None:
    for spooled in (snapshot, record_path(snapshot), metrics):
        spooled.unlink(missing_ok=True)
