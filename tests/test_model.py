import numpy as np
import pytest

from sknet.model import (
    SelectiveKernelConv,
    build_model,
    count_parameters,
    resnext50,
    sknet50,
    sknet_tiny,
)
from sknet.training.runtime import configure


@pytest.fixture(scope="module", autouse=True)
def pynative():
    configure("CPU", seed=0, graph_mode=False)  # shape checks need no compilation
    yield
    configure("CPU", graph_mode=True)


@pytest.mark.parametrize(
    "factory, classes, expected",
    [
        (sknet50, 1000, 27_479_784),  # paper: 27.5 M
        (sknet50, 10, 25_451_274),
        (resnext50, 1000, 25_028_904),  # torchvision resnext50_32x4d: 25,028,904
        (resnext50, 10, 23_000_394),
    ],
)
def test_parameter_counts(factory, classes, expected):
    assert count_parameters(factory(num_classes=classes)) == expected


def test_sk_unit_has_a_plain_and_a_dilated_grouped_path_and_a_fused_descriptor():
    network = sknet50(num_classes=10)
    units = [c for _, c in network.cells_and_names() if isinstance(c, SelectiveKernelConv)]
    assert len(units) == 16  # one per bottleneck: 3 + 4 + 6 + 3
    first = units[0]
    convs = [path[0][0] for path in first.paths]
    assert [(c.group, c.dilation[-1], c.kernel_size) for c in convs] == [(32, 1, (3, 3)), (32, 2, (3, 3))]
    reduce_fc = first.attention.fc_reduce[0]
    # d = max(128/16, 32)
    assert (reduce_fc.in_channels, reduce_fc.out_channels, reduce_fc.has_bias) == (128, 32, False)
    last = units[-1].attention.fc_reduce[0]
    assert (last.in_channels, last.out_channels) == (1024, 64)  # d = 1024/16
    assert units[-1].attention.fc_select.out_channels == 2 * 1024


def test_sk_attention_weights_are_a_softmax_across_paths():
    import mindspore as ms

    from sknet.model import SelectiveKernelAttention

    attention = SelectiveKernelAttention(64, num_paths=2)
    attention.set_train(False)
    weights = attention(ms.Tensor(np.random.default_rng(1).standard_normal((3, 64, 4, 4)).astype(np.float32)))
    assert weights.shape == (3, 2, 64, 1, 1)
    np.testing.assert_allclose(weights.asnumpy().sum(axis=1), 1.0, rtol=1e-5)


def test_resnext_has_no_selective_kernel_units():
    network = resnext50(num_classes=10)
    assert not [c for _, c in network.cells_and_names() if isinstance(c, SelectiveKernelConv)]


@pytest.mark.parametrize("stem, size", [("imagenet", 224), ("imagenet", 32), ("cifar", 32)])
def test_sknet50_output_shape(stem, size):
    import mindspore as ms

    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    network = sknet50(num_classes=10, stem=stem)
    network.set_train(False)
    assert network(x).shape == (2, 10)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_tiny_variant_output_shape(stem):
    import mindspore as ms

    x = ms.Tensor(np.zeros((3, 3, 32, 32), np.float32))
    assert sknet_tiny(num_classes=7, stem=stem)(x).shape == (3, 7)


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        build_model("vgg16", 10, "cifar")


@pytest.mark.slow
def test_one_sknet50_training_step_runs_and_changes_the_weights():
    import mindspore as ms
    from mindspore import nn

    configure("CPU", seed=0, graph_mode=True)
    network = sknet50(num_classes=10, stem="imagenet")
    before = network.head.weight.asnumpy().copy()
    optimizer = nn.Momentum(network.trainable_params(), learning_rate=0.1, momentum=0.9, loss_scale=1024.0)
    step = ms.amp.build_train_network(
        network, optimizer, nn.CrossEntropyLoss(), level="O0",
        loss_scale_manager=ms.FixedLossScaleManager(1024.0, drop_overflow_update=False),
    )
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(rng.integers(0, 10, 4).astype(np.int32))
    loss = float(step(images, labels).asnumpy())
    assert np.isfinite(loss) and 0 < loss < 10
    assert not np.array_equal(before, network.head.weight.asnumpy())
