"""Steps, sinks and epochs: how a run's global steps map onto `Model.train`, without a sink (CPU) and with one
(Ascend/GPU: each call of the step callbacks is one sink of `sink_size` steps)."""

import pytest

from sknet.config import load_config
from sknet.errors import ConfigError
from sknet.training.steps import MIN_SINK_STEPS, sink_size, train_call


def test_cpu_feeds_every_step_since_mindspore_has_no_sink_there():
    assert sink_size(load_config("cpu-smoke").train, steps_per_epoch=20) == 1


def test_the_ascend_profile_sinks_a_third_of_an_epoch_between_host_syncs():
    assert sink_size(load_config("cifar10-ascend8").train, steps_per_epoch=195) == 65  # 50,000 / (32 × 8)


@pytest.mark.parametrize("steps_per_epoch, overrides, expected", [
    (100, ["train.sink_size=50", "train.log_every_steps=20", "train.checkpoint_every_steps=0"], 20),
    (90, ["train.sink_size=0", "train.log_every_steps=45", "train.checkpoint_every_steps=900"], 45),
    (96, ["train.sink_size=4", "train.log_every_steps=8", "train.checkpoint_every_steps=96"], 4),
])
def test_a_sink_divides_the_epoch_and_the_log_and_checkpoint_cadence(steps_per_epoch, overrides, expected):
    train = load_config("cifar10-ascend8", overrides).train
    size = sink_size(train, steps_per_epoch)
    assert size == expected
    assert steps_per_epoch % size == 0 and train.log_every_steps % size == 0
    assert train.checkpoint_every_steps % size == 0


@pytest.mark.parametrize("steps_per_epoch, overrides", [
    (195, ["train.log_every_steps=10"]),  # gcd(195, 10, 975) = 5
    (97, ["train.log_every_steps=50"]),  # a prime epoch: one step per sink
    (195, ["train.sink_size=4"]),  # 195 = 3·5·13: a sink of 4 would silently become 1
])
def test_a_cadence_that_would_starve_the_sink_is_refused_naming_the_keys(steps_per_epoch, overrides):
    train = load_config("cifar10-ascend8", overrides).train
    with pytest.raises(ConfigError) as refused:
        sink_size(train, steps_per_epoch)
    message = str(refused.value)
    assert "train.log_every_steps" in message and "train.checkpoint_every_steps" in message
    assert f"at least {MIN_SINK_STEPS}" in message


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
