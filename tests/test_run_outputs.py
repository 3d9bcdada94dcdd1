"""What the flow's stages hand on: the training outcome on the node with rank 0 and on the others."""

import pytest

from sknet.errors import CheckpointError
from sknet.plan import plan_run, release_name
from sknet.run_outputs import training_outcome


def test_a_node_without_rank_zero_finishes_without_a_checkpoint(tmp_path):
    outcome = training_outcome({"ok": True, "local_ranks": [2, 3]}, tmp_path)
    assert outcome["holds_rank_zero"] is False and outcome["checkpoint"] is None


def test_the_node_with_rank_zero_must_have_a_checkpoint(tmp_path):
    (tmp_path / "result.json").write_text('{"complete": true, "steps": 60}')
    with pytest.raises(CheckpointError, match=rf"{tmp_path}/checkpoints holds no checkpoint"):
        training_outcome({"ok": True, "local_ranks": [0, 1]}, tmp_path)


def test_the_nodes_of_one_job_share_the_plan_of_its_run_id(tmp_path):
    plans = [plan_run("cpu-smoke", {"launch.node_rank": k}, run_id="nightly-2026-11-29", work_dir=tmp_path,
                      publish_to="s3://models/sknet")[1] for k in (0, 1)]
    assert plans[0] == plans[1]
    assert plans[0].checkpoint_mirror == "s3://models/sknet/runs/nightly-2026-11-29/checkpoints"
    assert plans[0].release_uri == "s3://models/sknet/releases/sknet-tiny/nightly-2026-11-29"


def test_release_names_follow_the_model_name():
    assert [release_name(m) for m in ("sknet50", "resnext50", "sknet_tiny")] == ["sknet50", "resnext50", "sknet-tiny"]
