"""Which device a rank binds (the Ascend part cannot run here: only the choice is tested)."""

import pytest

from sknet.errors import SknetError
from sknet.training.runtime import device_id_for


def test_a_rank_table_rank_binds_the_device_its_launcher_gave_it():
    assert device_id_for("Ascend", {"DEVICE_ID": "5", "RANK_ID": "1", "RANK_TABLE_FILE": "rt.json"}) == 5
    assert device_id_for("GPU", {"DEVICE_ID": "3"}) == 3


def test_msrun_ranks_leave_the_device_to_msrun():
    assert device_id_for("Ascend", {"DEVICE_ID": "0", "MS_ROLE": "MS_WORKER"}) is None


def test_cpu_and_plain_processes_bind_no_device_id():
    assert device_id_for("CPU", {"DEVICE_ID": "2"}) is None
    assert device_id_for("Ascend", {}) is None


def test_a_malformed_device_id_is_named():
    with pytest.raises(SknetError, match="DEVICE_ID='npu4': expected a device number"):
        device_id_for("Ascend", {"DEVICE_ID": "npu4"})


def test_fixed_and_dynamic_loss_scaling():
    import mindspore as ms

    from sknet.config import load_config
    from sknet.training.runtime import loss_scaling

    manager, optimizer_scale = loss_scaling(load_config("cpu-smoke").train)
    assert isinstance(manager, ms.FixedLossScaleManager) and optimizer_scale == 1024.0
    assert manager.get_drop_overflow_update() is False  # the only fixed kind MindSpore runs on CPU
    manager, optimizer_scale = loss_scaling(load_config("cifar10-ascend8").train)
    assert isinstance(manager, ms.DynamicLossScaleManager) and optimizer_scale == 1.0
    assert manager.get_loss_scale() == 1024.0


def test_a_dynamic_loss_scale_on_cpu_is_refused_with_the_way_out():
    from sknet.config import load_config
    from sknet.errors import ConfigError

    with pytest.raises(ConfigError, match="train.loss_scale_mode=dynamic needs Ascend or GPU"):
        load_config("cpu-smoke", ["train.loss_scale_mode=dynamic"])


def test_sknet50s_gradients_are_all_reduced_in_four_runs_of_about_equal_bytes():
    from sknet.model import build_model
    from sknet.training.runtime import fusion_split_indices

    sizes = [p.size for p in build_model("sknet50", 10, "imagenet").trainable_params()]
    cuts = fusion_split_indices(sizes)
    assert len(sizes) == 273 and cuts == sorted(set(cuts)) and len(cuts) == 3 and 0 < cuts[0] and cuts[-1] < 273
    runs = [sum(sizes[a:b]) for a, b in zip([0, *cuts], [*cuts, len(sizes)], strict=True)]
    assert sum(runs) == sum(sizes)
    assert max(runs) < 0.4 * sum(sizes)  # no run holds most of the bytes: each all-reduce can overlap backprop


def test_a_network_of_few_parameters_gets_fewer_runs_not_empty_ones():
    from sknet.training.runtime import fusion_split_indices

    assert fusion_split_indices([10, 1000, 10]) == [2]
    assert fusion_split_indices([5]) == []


@pytest.mark.parametrize("keep, wrapped", [(None, True), (True, True), (False, False)])
def test_keep_batchnorm_fp32_reaches_mindsporess_amp(keep, wrapped):
    """Issue #26 §6: O2 keeps BatchNorm in fp32 unless train.keep_batchnorm_fp32 says otherwise (the zoo's False);
    MindSpore marks a kept one by wrapping it in `_OutputTo16` (mindspore/train/amp.py, _do_keep_batchnorm_fp32)."""
    from mindspore import nn
    from mindspore.train.amp import _OutputTo16

    from sknet.config import load_config
    from sknet.model import build_model
    from sknet.training.loop import build_train_step

    overrides = ["train.amp_level=O2"] + ([] if keep is None else [f"train.keep_batchnorm_fp32={str(keep).lower()}"])
    train = load_config("cpu-smoke", overrides).train
    network = build_model("sknet_tiny", 10, "cifar")
    optimizer = nn.Momentum(network.trainable_params(), learning_rate=0.1, momentum=0.9)
    step = build_train_step(network, optimizer, nn.CrossEntropyLoss(), train)
    kept = [cell for _, cell in step.cells_and_names() if isinstance(cell, _OutputTo16)]
    assert bool(kept) is wrapped


def test_the_ascend_profile_runs_batchnorm_in_fp16_as_the_zoo_measured():
    from sknet.config import load_config

    assert load_config("cifar10-ascend8").train.keep_batchnorm_fp32 is False
    assert load_config("cpu-smoke").train.keep_batchnorm_fp32 is None  # O0: nothing is cast
