"""SKNet (Li et al., "Selective Kernel Networks", CVPR 2019) and its ResNeXt baseline in MindSpore.

SKNet-50 is ResNeXt-50 (32×4d) with each bottleneck's 3×3 grouped conv replaced by a selective-kernel
unit: two grouped 3×3 paths, the second dilated by 2 (the paper's stand-in for 5×5), fused by summation,
squeezed to a `max(C/16, 32)`-wide descriptor and re-weighted per channel by a softmax across paths.
Everything follows the paper (fuse/select fc layers are `Dense`, without bias); none of the model zoo's
deviations (no ReLU after the first 1×1, an extra BN after the SK conv, a biased fuse fc without BN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mindspore import nn, ops
from mindspore.common.initializer import HeNormal, TruncatedNormal

STEMS = ("imagenet", "cifar")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
    return nn.Conv2d(
        in_ch, out_ch, kernel, stride=stride, pad_mode="pad", padding=dilation * (kernel // 2),
        dilation=dilation, group=groups, has_bias=False,
        weight_init=HeNormal(mode="fan_out", nonlinearity="relu"),
    )


def conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
    return nn.SequentialCell([_conv(in_ch, out_ch, kernel, stride, dilation, groups), nn.BatchNorm2d(out_ch)])


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
    return nn.SequentialCell([conv_bn(in_ch, out_ch, kernel, stride, dilation, groups), nn.ReLU()])


class SelectiveKernelAttention(nn.Cell):
    """Fuse and select: global pool of the fused map → fc C→d + BN + ReLU → fc d→C per path → softmax.

    Returns per-path channel weights of shape (N, paths, C, 1, 1) that sum to 1 across paths.
    """

    def __init__(self, channels: int, num_paths: int = 2, reduction: int = 16, min_dim: int = 32):
        super().__init__()
        dim = max(channels // reduction, min_dim)
        self.num_paths = num_paths
        self.channels = channels
        self.fc_reduce = nn.SequentialCell([
            nn.Dense(channels, dim, weight_init=HeNormal(mode="fan_out", nonlinearity="relu"), has_bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(),
        ])
        self.fc_select = nn.Dense(dim, channels * num_paths, weight_init=HeNormal(mode="fan_out"), has_bias=False)

    def construct(self, fused):
        squeezed = ops.mean(fused, (2, 3))
        logits = self.fc_select(self.fc_reduce(squeezed))
        logits = ops.reshape(logits, (-1, self.num_paths, self.channels, 1, 1))
        return ops.softmax(logits, axis=1)


class SelectiveKernelConv(nn.Cell):
    """Grouped 3×3 paths with the given dilations, combined by selective-kernel attention."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, groups: int = 32,
        dilations: Sequence[int] = (1, 2), reduction: int = 16, min_dim: int = 32,
    ):
        super().__init__()
        self.paths = nn.CellList(
            [conv_bn_relu(in_ch, out_ch, 3, stride, dilation, groups) for dilation in dilations]
        )
        self.attention = SelectiveKernelAttention(out_ch, len(dilations), reduction, min_dim)

    def construct(self, x):
        features = ()
        for path in self.paths:
            features += (path(x),)
        fused = features[0]
        for feature in features[1:]:
            fused = fused + feature
        weights = self.attention(fused)
        out = features[0] * weights[:, 0]
        for index in range(1, len(features)):
            out = out + features[index] * weights[:, index]
        return out


class Bottleneck(nn.Cell):
    """1×1 reduce → 3×3 transform (SK or grouped) → 1×1 expand, plus (projection) shortcut, then ReLU."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, transform: Callable[..., nn.Cell]):
        super().__init__()
        self.reduce = conv_bn_relu(in_ch, mid_ch, 1)
        self.transform = transform(mid_ch, mid_ch, stride)
        self.expand = conv_bn(mid_ch, out_ch, 1)
        needs_projection = stride != 1 or in_ch != out_ch
        self.shortcut = conv_bn(in_ch, out_ch, 1, stride) if needs_projection else nn.Identity()
        self.relu = nn.ReLU()

    def construct(self, x):
        out = self.expand(self.transform(self.reduce(x)))
        return self.relu(out + self.shortcut(x))


def _stem(kind: str, width: int) -> nn.Cell:
    if kind == "imagenet":
        return nn.SequentialCell(
            [conv_bn_relu(3, width, 7, stride=2), nn.MaxPool2d(3, stride=2, pad_mode="pad", padding=1)]
        )
    if kind == "cifar":
        return conv_bn_relu(3, width, 3)
    raise ValueError(f"unknown stem {kind!r}: expected one of {STEMS}")


class SKNet(nn.Cell):
    """A bottleneck network of four stages; `selective=False` gives the matching ResNeXt."""

    def __init__(
        self, layers: Sequence[int], mid_widths: Sequence[int], out_widths: Sequence[int], *,
        num_classes: int = 1000, stem: str = "imagenet", stem_width: int = 64, groups: int = 32,
        selective: bool = True, reduction: int = 16, min_attention_dim: int = 32,
    ):
        super().__init__()
        if selective:
            def transform(i: int, o: int, s: int) -> nn.Cell:
                return SelectiveKernelConv(i, o, s, groups, (1, 2), reduction, min_attention_dim)
        else:
            def transform(i: int, o: int, s: int) -> nn.Cell:
                return conv_bn_relu(i, o, 3, s, groups=groups)
        self.stem = _stem(stem, stem_width)
        blocks, in_ch = [], stem_width
        for stage, (depth, mid, out) in enumerate(zip(layers, mid_widths, out_widths, strict=True)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(Bottleneck(in_ch, mid, out, stride, transform))
                in_ch = out
        self.blocks = nn.SequentialCell(blocks)
        self.head = nn.Dense(in_ch, num_classes, weight_init=TruncatedNormal(sigma=0.01), bias_init="zeros")

    def construct(self, x):
        features = self.blocks(self.stem(x))
        return self.head(ops.mean(features, (2, 3)))


_RESNEXT50_SHAPE = dict(layers=(3, 4, 6, 3), mid_widths=(128, 256, 512, 1024), out_widths=(256, 512, 1024, 2048))


def sknet50(num_classes: int = 1000, stem: str = "imagenet") -> SKNet:
    """SKNet-50: 27.48 M parameters at 1000 classes (paper: 27.5 M)."""
    return SKNet(**_RESNEXT50_SHAPE, num_classes=num_classes, stem=stem)


def resnext50(num_classes: int = 1000, stem: str = "imagenet") -> SKNet:
    """ResNeXt-50 (32×4d), the baseline SKNet-50 is built on: 25.03 M parameters at 1000 classes."""
    return SKNet(**_RESNEXT50_SHAPE, num_classes=num_classes, stem=stem, selective=False)


def sknet_tiny(num_classes: int = 10, stem: str = "cifar") -> SKNet:
    """One SK bottleneck per stage, a quarter of the width: for tests and smoke runs on CPU."""
    return SKNet(
        layers=(1, 1, 1, 1), mid_widths=(32, 64, 128, 256), out_widths=(64, 128, 256, 512),
        num_classes=num_classes, stem=stem, stem_width=32, groups=8, min_attention_dim=16,
    )


MODELS: dict[str, Callable[..., SKNet]] = {"sknet50": sknet50, "resnext50": resnext50, "sknet_tiny": sknet_tiny}


def build_model(name: str, num_classes: int, stem: str) -> SKNet:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, stem=stem)


def count_parameters(network: nn.Cell) -> int:
    """Trainable parameters (BN moving statistics are not trainable)."""
    return sum(p.size for p in network.trainable_params())
