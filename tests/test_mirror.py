"""Checkpoint mirroring to object storage, with stand-in checkpoint files (no MindSpore needed)."""

from sknet.training.checkpoint import CheckpointMirror, checkpoint_path, latest_checkpoint, write_record

S3_PREFIX = "runs/r1/checkpoints"


def write_checkpoint(run, step):
    path = checkpoint_path(run, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights of step {step}".encode())
    write_record(path, step)
    (run / "metrics.jsonl").write_text(f'{{"step": {step}}}\n')


def test_push_uploads_checkpoint_and_metrics_and_prunes_the_oldest(store, tmp_path):
    mirror = CheckpointMirror(store)
    for step in (10, 20, 30):
        write_checkpoint(tmp_path / "run", step)
        mirror.push(tmp_path / "run", step, keep=2)
    assert mirror.steps() == [20, 30]
    assert store.get_bytes("metrics.jsonl") == b'{"step": 30}\n'


def test_a_fresh_machine_pulls_the_newest_checkpoint_and_its_metrics(store, tmp_path):
    mirror = CheckpointMirror(store)
    for step in (10, 20):
        write_checkpoint(tmp_path / "first", step)
        mirror.push(tmp_path / "first", step, keep=3)
    assert mirror.pull(tmp_path / "second") == 20
    step, path = latest_checkpoint(tmp_path / "second")
    assert step == 20 and path.read_bytes() == b"weights of step 20"
    assert (tmp_path / "second" / "metrics.jsonl").read_text() == '{"step": 20}\n'


def test_nothing_is_pulled_when_the_local_checkpoint_is_as_new(store, tmp_path):
    mirror = CheckpointMirror(store)
    write_checkpoint(tmp_path / "run", 10)
    mirror.push(tmp_path / "run", 10, keep=3)
    assert mirror.pull(tmp_path / "run") is None


def test_an_empty_mirror_pulls_nothing(store, tmp_path):
    assert CheckpointMirror(store).pull(tmp_path / "run") is None
    assert latest_checkpoint(tmp_path / "run") is None


def test_background_uploads_keep_only_the_newest_waiting_and_upload_the_last_at_close(store, tmp_path):
    import threading

    from sknet.training.checkpoint import BackgroundUploads

    run = tmp_path / "run"
    uploaded, release = [], threading.Event()
    mirror = CheckpointMirror(store)
    original = mirror.push

    def slow_push(*args, **kwargs):  # an endpoint that holds the first upload until the test lets it go
        uploaded.append(args[1])
        release.wait(30)
        return original(*args, **kwargs)

    mirror.push = slow_push
    with BackgroundUploads(mirror, run, keep=2) as uploads:
        for step in (10, 20, 30, 40):
            write_checkpoint(run, step)
            uploads.submit(step)
            uploads.submit(step)  # a second submit of one step uploads nothing more
            for old in (10, 20, 30, 40):  # pruning right after the submit cannot take the upload away
                if old < step:
                    checkpoint_path(run, old).unlink(missing_ok=True)
            if step == 10:
                while uploads.status().uploading_step != 10:  # the worker has taken step 10
                    threading.Event().wait(0.01)
        status = uploads.status()  # 10 uploading; 20 and 30 superseded while waiting; 40 waits
        assert (status.uploading_step, status.pending_step, status.superseded) == (10, 40, 2)
        assert status.longest_submit_seconds < 1.0  # submit never waited on the held upload
        release.set()
    assert uploaded == [10, 40]
    assert uploads.status().mirrored_step == 40 and mirror.steps() == [10, 40]
    assert store.get_bytes("step-00000040.ckpt") == b"weights of step 40"
    assert store.get_bytes("metrics.jsonl") == b'{"step": 40}\n'
    assert not (run / ".mirror-spool").exists()


def test_two_ranks_train_through_a_hung_mirror_and_it_ends_with_the_final_checkpoint(s3_server, bucket,
                                                                                     synthetic_data, tmp_path):
    """Issue #26 §3: rank 0 mirrors a checkpoint every step to an S3 endpoint that holds each request for 3 s
    (a push is several requests) while both ranks train; no step waits on it, and the last one is mirrored."""
    import json

    from infra.faultproxy import FaultProxy
    from sknet.config import load_config
    from sknet.launch.launcher import launch
    from sknet.storage import S3Store
    from sknet.training.train_log import parse_step_line

    proxy = FaultProxy(s3_server.port)
    cfg = load_config("cpu-smoke", [
        f"data.uri={synthetic_data}", f"train.output_dir={tmp_path / 'run'}", "launch.ranks=2", "train.epochs=1",
        "data.num_train_samples=384",  # 6 steps of 2 × 32
        "train.checkpoint_every_steps=1", "train.log_every_steps=1", f"storage.endpoint_url={proxy.endpoint}",
        f"storage.uri=s3://{bucket}", f"train.checkpoint_mirror=s3://{bucket}/runs/r1/checkpoints"])

    def hold_while_training(line: str) -> None:
        if (step := parse_step_line(line)) is not None:
            proxy.delay_seconds = 3.0 if step.step < step.total_steps else 0.0  # hung, until the last step

    try:
        launch(cfg, on_line=hold_while_training)
    finally:
        proxy.close()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["complete"] and result["steps"] == 6
    mirror = result["mirror"]
    assert mirror["mirrored_step"] == 6 and mirror["superseded"] >= 2 and mirror["failed"] == 0
    assert mirror["longest_submit_seconds"] < 1.0  # each push held ≥ 3 s a request: the step never waited
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("mirror", {}).get("superseded", 0) > 0 for r in records if r["event"] == "step")
    held = CheckpointMirror(S3Store(f"s3://{bucket}/runs/r1/checkpoints", endpoint_url=s3_server.endpoint))
    assert held.steps()[-1] == 6


def test_a_failed_background_upload_is_a_warning_and_training_goes_on(tmp_path, caplog):
    from sknet.storage import LocalStore, StorageError
    from sknet.training.checkpoint import BackgroundUploads

    class Unreachable(LocalStore):
        def put(self, src, key):
            raise StorageError(f"put s3://gone/{key}: endpoint unreachable")

    run = tmp_path / "run"
    with BackgroundUploads(CheckpointMirror(Unreachable(tmp_path / "bucket")), run, keep=2) as uploads:
        write_checkpoint(run, 10)
        uploads.submit(10)
    assert "checkpoint of step 10 kept locally only, mirroring failed: put s3://gone/step-00000010.ckpt" in caplog.text
    assert latest_checkpoint(run)[0] == 10
