"""Checkpoint mirroring to object storage, with stand-in checkpoint files (no MindSpore needed)."""

from sknet.checkpoint import CheckpointMirror, checkpoint_path, latest_checkpoint

S3_PREFIX = "runs/r1/checkpoints"


def write_checkpoint(run, step):
    path = checkpoint_path(run, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights of step {step}".encode())
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
