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


def test_background_uploads_return_at_once_and_are_all_done_after_close(store, tmp_path):
    from sknet.training.checkpoint import BackgroundUploads

    run = tmp_path / "run"
    uploaded = []
    mirror = CheckpointMirror(store)
    original = mirror.push
    mirror.push = lambda *args, **kwargs: (uploaded.append(args[1]), original(*args, **kwargs))
    with BackgroundUploads(mirror, run, keep=2) as uploads:
        for step in (10, 20, 30):
            write_checkpoint(run, step)
            uploads.submit(step)
            uploads.submit(step)  # a second submit of one step uploads nothing more
            for old in (10, 20, 30):  # pruning right after the submit cannot take the upload away
                if old < step:
                    checkpoint_path(run, old).unlink(missing_ok=True)
    assert uploaded == [10, 20, 30]
    assert mirror.steps() == [20, 30]
    assert store.get_bytes("step-00000030.ckpt") == b"weights of step 30"
    assert store.get_bytes("metrics.jsonl") == b'{"step": 30}\n'
    assert not (run / ".mirror-spool").exists()


def test_a_failed_background_upload_is_a_warning_and_training_goes_on(tmp_path, caplog):
    from sknet.training.checkpoint import BackgroundUploads
    from sknet.storage import LocalStore, StorageError

    class Unreachable(LocalStore):
        def put(self, src, key):
            raise StorageError(f"put s3://gone/{key}: endpoint unreachable")

    run = tmp_path / "run"
    with BackgroundUploads(CheckpointMirror(Unreachable(tmp_path / "bucket")), run, keep=2) as uploads:
        write_checkpoint(run, 10)
        uploads.submit(10)
    assert "checkpoint of step 10 kept locally only, mirroring failed: put s3://gone/step-00000010.ckpt" in caplog.text
    assert latest_checkpoint(run)[0] == 10
