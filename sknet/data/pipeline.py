"""The MindSpore input pipeline over the CIFAR-10 binary layout (the zoo's augmentation)."""

from __future__ import annotations

from pathlib import Path

from sknet.data.layout import MEAN, STD, layout_dir


def build_dataset(
    root: str | Path,
    *,
    train: bool,
    batch_size: int,
    image_size: int = 32,
    num_samples: int | None = None,
    num_shards: int = 1,
    shard_id: int = 0,
    num_parallel_workers: int = 2,
    shuffle: bool | None = None,
    drop_remainder: bool | None = None,
):
    """Batches of (float32 NCHW images, int32 labels).

    Training: RandomCrop 32 pad 4 + horizontal flip; both: resize when `image_size` is not 32,
    rescale to [0, 1], normalize with the CIFAR mean/std, HWC→CHW. `num_samples` caps the total
    across shards; each shard reads its own disjoint part. Seeds come from `sknet.training.runtime.configure`.
    """
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore.dataset import transforms, vision

    per_shard = None if num_samples is None else max(1, num_samples // num_shards)
    dataset = ds.Cifar10Dataset(
        str(layout_dir(root)),
        usage="train" if train else "test",
        num_samples=per_shard,
        shuffle=train if shuffle is None else shuffle,
        num_shards=num_shards if num_shards > 1 else None,
        shard_id=shard_id if num_shards > 1 else None,
        num_parallel_workers=num_parallel_workers,
    )
    ops = []
    if train:
        ops += [vision.RandomCrop((32, 32), (4, 4, 4, 4)), vision.RandomHorizontalFlip()]
    if image_size != 32:
        ops.append(vision.Resize((image_size, image_size)))
    ops += [
        vision.Rescale(1.0 / 255.0, 0.0),
        vision.Normalize(mean=list(MEAN), std=list(STD)),
        vision.HWC2CHW(),
    ]
    dataset = dataset.map(ops, input_columns="image", num_parallel_workers=num_parallel_workers)
    dataset = dataset.map(transforms.TypeCast(ms.int32), input_columns="label")
    return dataset.batch(batch_size, drop_remainder=train if drop_remainder is None else drop_remainder)
