"""Steps, sinks and epochs: the step plan every rank, the dry run and preflight use (`plan_steps`), and how a run's
global steps map onto `Model.train` without a sink (CPU) and with one (Ascend/GPU: each call of the step callbacks
is one sink of `sink_size` steps)."""

import itertools

import pytest

from sknet.config import load_config
from sknet.training.steps import MIN_SINK_STEPS, plan_steps, shard_steps, train_call


def test_cpu_feeds_every_step_and_keeps_the_configured_cadence():
    plan = plan_steps(load_config("cpu-smoke"))
    assert (plan.steps_per_epoch, plan.sink_size, plan.log_every_steps, plan.checkpoint_every_steps) == (20, 1, 5, 20)
    assert plan.adjusted == ()


@pytest.mark.parametrize("ranks, steps_per_epoch, sink", [
    (1, 1562, 71), (2, 781, 71), (4, 390, 65), (8, 195, 65),  # one server
    (16, 97, 97), (32, 48, 48), (64, 24, 24),  # 2, 4 and 8 servers of 8: 97 is prime, 24 is under 16 × 2
])
def test_the_ascend_profile_plans_a_sink_dividing_the_epoch_at_every_supported_world_size(ranks, steps_per_epoch, sink):
    plan = plan_steps(load_config("cifar10-ascend8", [f"launch.ranks={ranks}"]))
    assert (plan.steps_per_epoch, plan.sink_size) == (steps_per_epoch, sink)
    assert steps_per_epoch % sink == 0 and sink >= min(MIN_SINK_STEPS, steps_per_epoch)
    assert plan.log_every_steps % sink == 0 and plan.checkpoint_every_steps % sink == 0
    assert plan.total_steps % sink == 0  # Model.train's "epochs" are whole sinks


def test_the_cadence_moves_to_the_nearest_sink_boundary_and_says_so():
    plan = plan_steps(load_config("cifar10-ascend8", ["launch.ranks=1"]))  # 1562 steps = 2 · 11 · 71
    assert (plan.log_every_steps, plan.checkpoint_every_steps) == (71, 994)  # 65 → 71, 975 → 14 × 71
    assert plan.adjusted == ("train.log_every_steps=65 → 71 (a multiple of the 71-step sink)",
                             "train.checkpoint_every_steps=975 → 994 (a multiple of the 71-step sink)")


def test_at_eight_ranks_the_zoo_cadence_stands_unchanged():
    plan = plan_steps(load_config("cifar10-ascend8"))
    assert (plan.sink_size, plan.log_every_steps, plan.checkpoint_every_steps, plan.adjusted) == (65, 65, 975, ())


@pytest.mark.parametrize("steps_per_epoch, overrides, sink", [
    (195, ["train.log_every_steps=10"], 39),  # 195 = 3·5·13: its divisors of at least 16 are 39, 65, 195
    (195, ["train.sink_size=4"], 39),  # a sink below 16 is raised to the nearest divisor that is not
    (195, ["train.sink_size=500"], 195),  # at most the whole epoch
    (12, ["train.log_every_steps=5"], 12),  # an epoch shorter than 16 steps: one sink an epoch
])
def test_the_sink_is_the_epochs_divisor_nearest_the_wanted_size_never_below_sixteen(steps_per_epoch, overrides,
                                                                                    sink):
    samples = steps_per_epoch * 32 * 8
    plan = plan_steps(load_config("cifar10-ascend8", [f"data.num_train_samples={samples}", *overrides]))
    assert (plan.steps_per_epoch, plan.sink_size) == (steps_per_epoch, sink)


def test_a_checkpoint_only_at_the_end_stays_so():
    plan = plan_steps(load_config("cifar10-ascend8", ["train.checkpoint_every_steps=0", "launch.ranks=2"]))
    assert plan.checkpoint_every_steps == 0


def test_the_plans_count_of_steps_is_mindsporess_own_for_every_shard(synthetic_data):
    """MindSpore's distributed sampler pads each shard to ceil(records / shards); `num_samples` caps a shard's share;
    the partial batch is dropped. The plan's count equals `get_dataset_size()` of the pipeline the ranks build."""
    from sknet.data.pipeline import build_dataset

    cases = itertools.product([1, 2, 3, 7, 8, 16, 64], [1, 32, 33], [None, 640, 999, 60_000])
    for shards, batch, samples in cases:
        dataset = build_dataset(synthetic_data, train=True, batch_size=batch, num_samples=samples, num_shards=shards,
                                shard_id=shards - 1, num_parallel_workers=1)
        assert dataset.get_dataset_size() == shard_steps(50_000, shards, batch, samples), (shards, batch, samples)


def test_without_a_sink_model_train_counts_epochs_and_a_resume_starts_in_its_epoch():
    call = train_call(start_step=25, steps_per_epoch=20, total_steps=60, sink=1)
    assert (call.epoch, call.initial_epoch, call.dataset_sink_mode, call.sink_size) == (3, 1, False, -1)
    assert call.global_step(25, cur_step_num=1) == 26  # Model.train counts this call's steps from 0


def test_with_a_sink_model_train_counts_sinks_and_the_global_step_advances_by_the_sink_size():
    call = train_call(start_step=130, steps_per_epoch=195, total_steps=195 * 90, sink=65)
    assert (call.epoch, call.initial_epoch, call.dataset_sink_mode, call.sink_size) == (270, 2, True, 65)
    # MindSpore's sink loop adds dataset_helper.sink_size() to cur_step_num per call of the step callbacks
    assert [call.global_step(130, calls * 65) for calls in (1, 2, 3)] == [195, 260, 325]


def test_a_sink_run_resumes_only_at_a_sink_boundary():
    with pytest.raises(ValueError, match="step 100 of 17550 is not a boundary of 65-step sinks"):
        train_call(start_step=100, steps_per_epoch=195, total_steps=195 * 90, sink=65)
