import re

import pytest

from sknet.config import Config, available_profiles, load_config
from sknet.errors import ConfigError
from sknet.training.runtime import check_on_this_host

CONTRACT_KEYS = [
    "data.uri", "data.allowed_prefixes", "data.num_train_samples", "data.num_eval_samples", "model.name", "model.stem",
    "train.epochs", "train.batch_size", "train.seed", "train.device_target", "launch.backend",
    "launch.ranks", "gate.threshold",
]


def lookup(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def test_shipped_profiles_are_the_two_documented_ones():
    assert available_profiles() == ["cifar10-ascend8", "cpu-smoke"]


@pytest.mark.parametrize("profile", ["cifar10-ascend8", "cpu-smoke"])
def test_profiles_load_and_expose_the_contract_keys(profile):
    cfg = load_config(profile)
    for key in CONTRACT_KEYS:
        lookup(cfg, key)  # raises AttributeError if a contract key went missing


def test_ascend_profile_is_the_zoo_recipe():
    cfg = load_config("cifar10-ascend8")
    assert (cfg.model.name, cfg.model.stem, cfg.data.image_size) == ("sknet50", "imagenet", 224)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr_schedule) == (32, 90, "warmup_poly")
    assert (cfg.train.base_lr, cfg.train.warmup_start_lr, cfg.train.warmup_epochs) == (0.1, 0.01, 5.0)
    assert (cfg.train.loss_scale, cfg.train.amp_level, cfg.train.device_target) == (1024.0, "O2", "Ascend")
    assert (cfg.launch.backend, cfg.launch.ranks) == ("ascend", 8)


def test_cpu_smoke_profile_is_tiny_and_on_cpu():
    cfg = load_config("cpu-smoke")
    assert (cfg.model.name, cfg.model.stem, cfg.train.device_target) == ("sknet_tiny", "cifar", "CPU")
    assert cfg.data.num_train_samples <= 1000


def test_overrides_are_parsed_to_the_field_type():
    cfg = load_config("cpu-smoke", ["train.epochs=1", "train.base_lr=0.5", "gate.compare_to_latest=true",
                                    "data.uri=123", "data.num_eval_samples=null"])
    assert cfg.train.epochs == 1 and cfg.train.base_lr == 0.5 and cfg.gate.compare_to_latest is True
    assert cfg.data.uri == "123"  # str fields keep the text verbatim
    assert cfg.data.num_eval_samples is None


def test_overrides_also_come_as_a_mapping():
    assert load_config("cpu-smoke", {"train.epochs": 7}).train.epochs == 7


def test_integers_are_accepted_for_float_fields():
    assert load_config(None, ["gate.threshold=1"]).gate.threshold == 1.0


def test_a_yaml_path_works_like_a_profile(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  epochs: 2\nmodel:\n  stem: imagenet\ndata:\n  image_size: 224\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.model.stem) == (2, "imagenet")


PREFIXES = ("a non-empty list of URI prefixes, e.g. [s3://bucket/datasets/, /data/cifar10] "
            "(unset: <storage.uri>/datasets/)")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batch_size=0", "train.batch_size: got 0, expected an integer ≥ 1"),
        ("train.batch_size=-3", "train.batch_size: got -3, expected an integer ≥ 1"),
        ("gate.threshold=1.5", "gate.threshold: got 1.5, expected a number in [0, 1]"),
        ("gate.threshold=-0.1", "gate.threshold: got -0.1, expected a number in [0, 1]"),
        ("model.stem=resnet", "model.stem: got 'resnet', expected one of 'imagenet', 'cifar'"),
        ("model.name=vgg", "model.name: got 'vgg', expected one of 'sknet50', 'resnext50', 'sknet_tiny'"),
        ("train.device_target=TPU", "train.device_target: got 'TPU', expected one of 'Ascend', 'GPU', 'CPU'"),
        ("launch.backend=slurm", "launch.backend: got 'slurm', expected one of 'cpu', 'ascend', 'msrun'"),
        ("launch.ranks=0", "launch.ranks: got 0, expected an integer ≥ 1"),
        ("train.epochs=abc", "train.epochs: got 'abc', expected an integer ≥ 1"),
        ("train.epochs=2.5", "train.epochs: got 2.5, expected an integer ≥ 1"),
        ("train.epochs=true", "train.epochs: got True, expected an integer ≥ 1"),
        ("train.base_lr=0", "train.base_lr: got 0.0, expected a number > 0"),
        ("train.momentum=1", "train.momentum: got 1.0, expected a number in [0, 1)"),
        ("data.num_train_samples=0", "data.num_train_samples: got 0, expected an integer ≥ 1"),
        ("gate.compare_to_latest=maybe", "gate.compare_to_latest: got 'maybe', expected true or false"),
        ("data.allowed_prefixes=s3://b/datasets/",
         f"data.allowed_prefixes: got 's3://b/datasets/', expected {PREFIXES}"),
        ("data.allowed_prefixes=[]", f"data.allowed_prefixes: got [], expected {PREFIXES}"),
        ("data.allowed_prefixes=[s3://b/datasets/, 3]", f"data.allowed_prefixes: got ['s3://b/datasets/', 3], "
                                                        f"expected {PREFIXES}"),
    ],
)
def test_bad_values_fail_with_key_value_and_expectation(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("cpu-smoke", [override])
    assert str(error.value) == f"override: {message}"


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epoch'; did you mean 'train\.epochs'\?"):
        load_config("cpu-smoke", ["train.epoch=1"])


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer' \(known: data, model, train"):
        load_config("cpu-smoke", ["optimizer.lr=1"])


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: train.batch_size: got 0"):
        load_config(path)


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_config(path)


def test_a_value_where_a_section_belongs_is_rejected(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train: got 3, expected a mapping of keys"):
        load_config(path)


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown config profile 'nope': expected one of \['cifar10-ascend8'"):
        load_config("nope")


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match=r"override 'train.epochs': expected key=value"):
        load_config("cpu-smoke", ["train.epochs"])


def test_digest_is_stable_and_tracks_every_value():
    first = load_config("cpu-smoke", ["train.epochs=2", "train.seed=3"]).digest()
    again = load_config("cpu-smoke", ["train.seed=3", "train.epochs=2"]).digest()
    other = load_config("cpu-smoke", ["train.epochs=2", "train.seed=4"]).digest()
    assert first == again != other
    assert len(first) == 64


def test_setting_a_value_to_its_default_keeps_the_digest():
    assert load_config("cpu-smoke").digest() == load_config("cpu-smoke", ["train.epochs=3"]).digest()


@pytest.mark.parametrize("text, value", [("1e9", 1e9), ("1.0e-4", 1e-4), ("2E3", 2e3), (".5e1", 5.0)])
def test_numbers_in_exponent_notation_are_numbers_not_strings(text, value):
    # YAML 1.1 reads `1e9` as a string; a user writing it means a number
    assert load_config("cpu-smoke", [f"train.base_lr={text}"]).train.base_lr == value


def test_exponent_notation_works_in_a_yaml_file_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  base_lr: 1e9\n  weight_decay: 1e-4\n")
    cfg = load_config(path)
    assert (cfg.train.base_lr, cfg.train.weight_decay) == (1e9, 1e-4)


@pytest.mark.parametrize("override", ["gate.threshold=.nan", "gate.threshold=nan", "train.base_lr=.inf",
                                      "gate.margin=-.inf"])
def test_non_finite_numbers_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: got .*, expected a finite number"):
        load_config("cpu-smoke", [override])


def test_a_nan_threshold_from_a_flow_parameter_is_refused():
    with pytest.raises(ConfigError, match=r"gate\.threshold: got nan, expected a finite number in \[0, 1\]"):
        load_config("cpu-smoke", {"gate.threshold": float("nan")})


def test_the_imagenet_stem_needs_images_large_enough():
    with pytest.raises(ConfigError, match=r"model\.stem=imagenet with data\.image_size=32: .* leaving a 1×1 map"):
        load_config("cpu-smoke", ["model.stem=imagenet"])
    assert load_config("cpu-smoke", ["model.stem=imagenet", "data.image_size=64"]).model.stem == "imagenet"


@pytest.mark.parametrize("prefix, why", [
    ("s3://b/datasets/../other/", "without empty, '.' or '..' segments"),
    ("s3://b/data%73ets/", "nothing decodes percent-encoding"),
    ("https://example.com/datasets/", "expected an s3:// or file:// URI or a local path"),
])
def test_each_allowed_prefix_must_name_one_clear_place(prefix, why):
    with pytest.raises(ConfigError) as error:
        load_config("cpu-smoke", {"data.allowed_prefixes": ["s3://b/datasets/", prefix]})
    assert str(error.value).startswith(f"override: data.allowed_prefixes: got ['s3://b/datasets/', '{prefix}'], "
                                       f"expected {PREFIXES}; '{prefix}': ")
    assert why in str(error.value)


def test_allowed_prefixes_round_trip_through_the_yaml_a_run_writes(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("data:\n  allowed_prefixes:\n    - s3://b/datasets/\n    - file:///data/cifar10\n")
    cfg = load_config(path)
    assert cfg.data.allowed_prefixes == ("s3://b/datasets/", "file:///data/cifar10")
    (tmp_path / "resolved.yaml").write_text(cfg.to_yaml())  # what the launcher hands each rank
    assert load_config(tmp_path / "resolved.yaml") == cfg


STORES = "s3://bucket[/prefix], file:///path or a local path (the stores sknet.storage opens)"


@pytest.mark.parametrize("override, message", [
    ("data.image_size=100000", "data.image_size: got 100000, expected an integer in [32, 1024]"),
    ("storage.uri=ftp://x", f"storage.uri: got 'ftp://x', expected {STORES}"),
    ("storage.uri=s3://", f"storage.uri: got 's3://', expected {STORES}"),
    ("storage.uri=file://", f"storage.uri: got 'file://', expected {STORES}"),
    ("train.checkpoint_mirror=http://x/ckpt", f"train.checkpoint_mirror: got 'http://x/ckpt', expected {STORES}"),
])
def test_values_that_could_never_work_are_refused_at_load_time_with_the_allowed_range(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("cpu-smoke", [override])
    assert str(error.value) == f"override: {message}"


@pytest.mark.parametrize("profile, overrides, message", [
    ("cpu-smoke", ["train.batch_size=100000"], "data.num_train_samples=640 gives no full batch of train.batch_size="
     "100000 on each of launch.ranks=1 rank(s): expected train.batch_size ≤ 640, the records of a rank's shard"),
    ("cifar10-ascend8", ["train.batch_size=6251"], "CIFAR-10's 50,000 training records give no full batch of "
     "train.batch_size=6251 on each of launch.ranks=8 rank(s): expected train.batch_size ≤ 6250"),
])
def test_a_batch_larger_than_a_ranks_shard_is_refused_at_load_time(profile, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(profile, overrides)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("profile, overrides", [
    ("cifar10-ascend8", []),  # the zoo: 224 px, 8 workers, batch 32 on 8 ranks
    ("cifar10-ascend8", ["data.image_size=1024", "train.batch_size=6250"]),
    ("cpu-smoke", ["train.batch_size=640", "storage.uri=s3://bucket/sknet", "train.checkpoint_mirror=s3://b/ckpt"]),
    ("cpu-smoke", ["storage.uri=file:///srv/sknet", "train.checkpoint_mirror=work/mirror"]),
    ("cpu-smoke", ["storage.uri=/srv/sknet", "train.checkpoint_mirror="]),
])
def test_the_zoo_recipe_sane_sizes_and_every_kind_of_store_still_load(profile, overrides):
    assert isinstance(load_config(profile, overrides), Config)


def test_more_dataset_workers_than_the_hosts_cpus_are_refused_by_the_host_naming_mindspores_limit():
    cfg = load_config("cifar10-ascend8")  # 8 workers: loads anywhere, since a config may be loaded where it only plans
    assert check_on_this_host(cfg, cpus=8) is cfg
    with pytest.raises(ConfigError, match=r"^data\.num_parallel_workers=8: expected an integer in \[1, 2\] on this "
                                          r"host \(its CPU count: MindSpore's dataset ops refuse more workers\)$"):
        check_on_this_host(cfg, cpus=2)
