"""Typed run configuration: YAML profiles, dotted overrides, validation and a stable digest.

A config is resolved once, up front: `load_config("cpu-smoke", ["train.epochs=1"])` returns a frozen
tree of dataclasses or raises `ConfigError` naming the key path, the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from sknet.data.allowlist import default_prefixes, location
from sknet.data.layout import TRAIN_RECORDS
from sknet.errors import ConfigError
from sknet.storage import FILE_SCHEME, S3_MAX_ATTEMPTS, S3_SCHEME, S3_TIMEOUT_SECONDS, is_object_store_uri

PROFILE_DIR = Path(__file__).parent / "configs"


def _bounds(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> dict:
    return {"low": low, "high": high, "low_open": low_open, "high_open": high_open}


def _at_least(low: float) -> dict:
    return {"metadata": _bounds(low)}


# CIFAR-10 is 32 px; the zoo resizes to 224 for the imagenet stem. Resizing further only interpolates, while memory
# and compute grow with the area (1024 px: 21× that of 224 px, 1,024× CIFAR's own).
MAX_IMAGE_SIZE = 1024
STORE_URI = {"store_uri": True}  # a str field naming a store: s3://, file:// or a local path (`sknet.storage`)


@dataclass(frozen=True)
class DataConfig:
    """Where the CIFAR-10 binary layout comes from and how much of it to use."""

    uri: str = ""  # local directory, file:// or s3:// dataset URI
    # Where the flow may take data.uri from: s3://, file:// or path prefixes (`sknet.data.allowlist`). None, the
    # default, stands for <storage.uri>/datasets/ and is resolved by `Config.allowed_dataset_prefixes`.
    allowed_prefixes: tuple[str, ...] | None = None
    num_train_samples: int | None = field(default=None, **_at_least(1))  # total across ranks
    num_eval_samples: int | None = field(default=None, **_at_least(1))
    image_size: int = field(default=32, metadata=_bounds(32, MAX_IMAGE_SIZE))  # 224 resizes for the imagenet stem
    # per dataset op of each rank; at most the CPU count of the host running the rank
    # (`sknet.training.runtime.check_on_this_host`)
    num_parallel_workers: int = field(default=2, **_at_least(1))


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["sknet50", "resnext50", "sknet_tiny"] = "sknet50"
    stem: Literal["imagenet", "cifar"] = "cifar"
    num_classes: int = field(default=10, **_at_least(2))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=90, **_at_least(1))
    batch_size: int = field(default=32, **_at_least(1))  # per rank
    seed: int = field(default=1, **_at_least(0))
    device_target: Literal["Ascend", "GPU", "CPU"] = "CPU"
    lr_schedule: Literal["warmup_poly", "cosine", "constant"] = "warmup_poly"
    base_lr: float = field(default=0.1, metadata=_bounds(0.0, low_open=True))
    warmup_epochs: float = field(default=5.0, **_at_least(0))
    warmup_start_lr: float = field(default=0.01, **_at_least(0))
    end_lr: float = field(default=0.0, **_at_least(0))
    poly_power: float = field(default=2.0, **_at_least(0))
    momentum: float = field(default=0.9, metadata=_bounds(0.0, 1.0, high_open=True))
    weight_decay: float = field(default=1e-4, **_at_least(0))
    label_smoothing: float = field(default=0.0, metadata=_bounds(0.0, 1.0, high_open=True))
    loss_scale: float = field(default=1024.0, **_at_least(1))  # the fixed scale, or the dynamic one's start
    loss_scale_mode: Literal["fixed", "dynamic"] = "fixed"  # dynamic: Ascend/GPU only, skips overflowed steps
    sink_size: int = field(default=0, **_at_least(0))  # steps per device sink on Ascend/GPU; 0: log_every_steps
    amp_level: Literal["O0", "O1", "O2", "O3"] = "O0"
    # BatchNorm in fp32 under amp (MindSpore's keep_batchnorm_fp32); None: the level's own (O2 keeps it, O3 not)
    keep_batchnorm_fp32: bool | None = None
    checkpoint_every_steps: int = field(default=500, **_at_least(0))  # 0: only at the end
    keep_checkpoints: int = field(default=3, **_at_least(1))
    log_every_steps: int = field(default=10, **_at_least(1))
    divergence_patience: int = field(default=5, **_at_least(1))  # bad losses in a row that stop the run
    max_loss: float | None = field(default=None, metadata=_bounds(0.0, low_open=True))  # None: only non-finite is bad
    output_dir: str = "work/runs/local"
    checkpoint_mirror: str = field(default="", metadata=STORE_URI)  # checkpoints copied there; resume pulls from it


@dataclass(frozen=True)
class LaunchConfig:
    backend: Literal["cpu", "ascend", "msrun"] = "cpu"
    # the Ascend chip: its topology rule is checked by the plan; "": the image's (SKNET_ASCEND_CHIP), else unchecked
    chip: Literal["", "910", "910B"] = ""
    ranks: int = field(default=1, **_at_least(1))  # in all, across nodes
    timeout_minutes: float = field(default=0.0, **_at_least(0))  # 0: no limit
    stop_grace_seconds: float = field(default=60.0, **_at_least(0))  # SIGTERM → KILL; within k8s's grace
    stall_timeout_seconds: float = field(default=0.0, **_at_least(0))  # no rank logs a step that long: stop; 0: off
    rank_table: str = ""  # HCCL rank table for the ascend backend (`sknet ranktable`)
    server_id: str = ""  # this host's server_id in the rank table (default: the one at one of its addresses)
    nodes: int = field(default=1, **_at_least(1))  # msrun: hosts taking part
    node_rank: int = field(default=0, **_at_least(0))  # msrun: this host's index
    master_addr: str = "127.0.0.1"  # msrun: the scheduler's host
    master_port: int = field(default=0, metadata=_bounds(0, 65535))  # 0: pick a free port


@dataclass(frozen=True)
class GateConfig:
    metric: Literal["top_1_accuracy", "top_5_accuracy"] = "top_1_accuracy"
    threshold: float = field(default=0.9, metadata=_bounds(0.0, 1.0))
    compare_to_latest: bool = False
    margin: float = field(default=0.0, metadata=_bounds(0.0, 1.0))  # when LATEST cannot be scored on our samples
    mode: Literal["superior", "non_inferior"] = "superior"  # paired: significantly better / not significantly worse
    significance: float = field(default=0.05, metadata=_bounds(0.0, 1.0, low_open=True))  # McNemar's exact test
    max_class_drop: float = field(default=0.05, metadata=_bounds(0.0, 1.0))  # no class may lose more (paired)
    max_ece: float | None = field(default=None, metadata=_bounds(0.0, 1.0))  # expected calibration error; None: off
    # with compare_to_latest: how much worse than LATEST's the ECE may be; None: off
    max_ece_increase: float | None = field(default=None, metadata=_bounds(0.0, 1.0))


@dataclass(frozen=True)
class ExportConfig:
    batch_size: int = field(default=1, **_at_least(1))
    dynamic_batch: bool = False
    tolerance: float = field(default=1e-4, **_at_least(0))  # max abs diff of the round trip
    accuracy_tolerance: float = field(default=0.001, metadata=_bounds(0.0, 1.0))  # |exported − checkpoint top-1|


@dataclass(frozen=True)
class StorageConfig:
    uri: str = field(default="file://work/store", metadata=STORE_URI)
    endpoint_url: str | None = None  # MinIO, Huawei OBS, ...
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    max_attempts: int = field(default=S3_MAX_ATTEMPTS, **_at_least(1))  # per S3 request, first try included
    timeout_seconds: float = field(default=S3_TIMEOUT_SECONDS, metadata=_bounds(0.0, low_open=True))  # per try


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    @property
    def allowed_dataset_prefixes(self) -> tuple[str, ...]:
        """`data.allowed_prefixes`, or when unset the store's own datasets: `<storage.uri>/datasets/`."""
        return self.data.allowed_prefixes or default_prefixes(self.storage.uri)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """sha256 of the resolved config's canonical JSON: equal configs, equal digests."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, overrides: Mapping[str, Any]) -> Config:
        """A copy with dotted overrides applied and validated like `load_config`'s."""
        raw = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        return _check_combination(_build(Config, raw, "", _Source("config", set(overrides))))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_config(
    profile: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> Config:
    """Resolve a profile name (`cpu-smoke`) or YAML path, apply dotted overrides, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if profile is not None:
        path = _profile_path(profile)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(loaded).__name__}")
        raw = loaded or {}
    parsed = parse_overrides(overrides)
    for key, value in parsed.items():
        _set_dotted(raw, key, value)
    return _check_combination(_build(Config, raw, "", _Source(source, set(parsed))))


# The imagenet stem and the four stages downsample by 32: below 64 px the last stage sees a 1×1 map.
IMAGENET_STEM_MIN_SIZE = 64


def _check_combination(cfg: Config) -> Config:
    """Checks that span keys, after each key was checked alone."""
    if cfg.train.loss_scale_mode == "dynamic" and cfg.train.device_target == "CPU":
        raise ConfigError("train.loss_scale_mode=dynamic needs Ascend or GPU (MindSpore refuses a dynamic or "
                          "overflow-dropping loss scale on CPU); use train.loss_scale_mode=fixed")
    if cfg.model.stem == "imagenet" and cfg.data.image_size < IMAGENET_STEM_MIN_SIZE:
        raise ConfigError(
            f"model.stem=imagenet with data.image_size={cfg.data.image_size}: the stem and stages downsample "
            f"by 32, leaving a {max(cfg.data.image_size // 32, 1)}×{max(cfg.data.image_size // 32, 1)} map; "
            f"use data.image_size ≥ {IMAGENET_STEM_MIN_SIZE} (the zoo resizes to 224) or model.stem=cifar")
    _check_batch_fits(cfg)
    return cfg


def _check_batch_fits(cfg: Config) -> None:
    """Each rank's shard (the training records, or data.num_train_samples, split over launch.ranks as MindSpore
    splits them: `sknet.training.steps.shard_steps`) holds at least one full batch: the ranks drop a partial one,
    so a larger batch trains nothing."""
    from sknet.training.steps import shard_steps

    samples = cfg.data.num_train_samples
    shard = shard_steps(TRAIN_RECORDS, cfg.launch.ranks, 1, samples)
    if cfg.train.batch_size > shard:
        source = f"data.num_train_samples={samples} gives" if samples and samples < TRAIN_RECORDS else \
            f"CIFAR-10's {TRAIN_RECORDS:,} training records give"
        raise ConfigError(
            f"{source} no full batch of train.batch_size={cfg.train.batch_size} on each of launch.ranks="
            f"{cfg.launch.ranks} rank(s): expected train.batch_size ≤ {shard}, the records of a rank's shard (a "
            "partial batch is dropped, so a larger one trains nothing)")


class _Source:
    """Names where a key's value came from: the profile file or an override."""

    def __init__(self, profile: str, overridden: set[str]):
        self.profile, self.overridden = profile, overridden

    def of(self, path: str) -> str:
        if path in self.overridden or any(k.startswith(path + ".") for k in self.overridden):
            return "override"
        return self.profile


def _profile_path(profile: str | Path) -> Path:
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    candidate = PROFILE_DIR / f"{profile}.yaml"
    if not candidate.is_file():
        raise ConfigError(
            f"unknown config profile {str(profile)!r}: expected one of {available_profiles()} "
            "or a path to a YAML file"
        )
    return candidate


def parse_overrides(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """`["train.epochs=1", …]` (values parsed as YAML scalars, str fields kept verbatim) or a mapping → dict."""
    if isinstance(overrides, Mapping):
        return dict(overrides)
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.epochs=1")
        key = key.strip()
        parsed[key] = text if _accepts_text(key) and text not in ("null", "~") else _parse_scalar(item, text)
    return parsed


def _parse_scalar(item: str, text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: value {text!r} is not a valid scalar") from None


def _accepts_text(dotted: str) -> bool:
    """True when `dotted` names a known str field, whose override value is kept verbatim."""
    cls: Any = Config
    for part in dotted.split("."):
        hints = get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in hints:
            return False
        cls = hints[part]
    return cls is str or str in get_args(cls)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {dotted}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str, source: _Source) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source.of(where)}: {where}: got {raw!r}, expected a mapping of keys")
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
            raise ConfigError(
                f"{source.of(prefix + str(key))}: unknown key '{prefix}{key}'{suggestion} "
                f"(known{' in ' + where if prefix else ''}: {', '.join(known)})"
            )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            values[f.name] = _build(tp, raw[f.name], path + ".", source)
        else:
            values[f.name] = _check_value(raw[f.name], tp, f.metadata, path, source.of(path))
    return cls(**values)


def _check_value(value: Any, tp: Any, bounds: Mapping[str, Any], path: str, source: str) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {path}: got {value!r}, expected {expected}")

    args = get_args(tp)
    if get_origin(tp) in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        args = get_args(tp)
    if get_origin(tp) is tuple:
        return _check_prefixes(value, fail)
    if get_origin(tp) is Literal:
        chosen = value if value in args else _literal_spelling(value, args)
        if chosen is None:
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return chosen
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        if bounds.get("store_uri") and value and not _is_store_uri(value):
            raise fail(f"{S3_SCHEME}bucket[/prefix], {FILE_SCHEME}/path or a local path (the stores sknet.storage "
                       "opens)")
        return value
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise fail("an integer" + _describe(bounds))
    if tp is float:
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise fail("a finite number" + _describe(bounds))
        value = number
    if not _within(value, bounds):
        raise fail(("an integer" if tp is int else "a number") + _describe(bounds))
    return value


def _literal_spelling(value: Any, choices: tuple) -> Any:
    """The choice `value` spells in another case (`910b` for `910B`), with `-` for `_` (`sknet-tiny`, the release
    name, for `sknet_tiny`) or as a YAML number (`chip: 910`), else None."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None

    def spelling(text: str) -> str:
        return text.lower().replace("-", "_")

    found = [c for c in choices if isinstance(c, str) and spelling(c) == spelling(str(value))]
    return found[0] if len(found) == 1 else None


def _is_store_uri(uri: str) -> bool:
    """A URI `sknet.storage.open_store` opens: s3:// with a bucket, file:// with a path, or a plain path."""
    if uri.startswith(S3_SCHEME):
        return bool(uri[len(S3_SCHEME):].partition("/")[0])
    if uri.startswith(FILE_SCHEME):
        return bool(uri[len(FILE_SCHEME):])
    return not is_object_store_uri(uri)


def _check_prefixes(value: Any, fail: Callable[[str], ConfigError]) -> tuple[str, ...]:
    """A non-empty list of dataset URI prefixes, each a place `sknet.data.allowlist.location` understands."""
    expected = ("a non-empty list of URI prefixes, e.g. [s3://bucket/datasets/, /data/cifar10] "
                "(unset: <storage.uri>/datasets/)")
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise fail(expected)
    for prefix in value:
        try:
            location(prefix)
        except ValueError as error:
            raise fail(f"{expected}; {prefix!r}: {error}") from None
    return tuple(value)


# YAML 1.1 (PyYAML) reads `1e9` and `1e-4` as strings; a user writing them means numbers.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _number(value: Any) -> float | None:
    """`value` as a float if it is a number (or a number in exponent notation), else None."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _within(value: float, bounds: Mapping[str, Any]) -> bool:
    low, high = bounds.get("low"), bounds.get("high")
    if low is not None and (value < low or (bounds.get("low_open") and value == low)):
        return False
    if high is not None and (value > high or (bounds.get("high_open") and value == high)):
        return False
    return True


def _describe(bounds: Mapping[str, Any]) -> str:
    low, high = bounds.get("low"), bounds.get("high")
    if low is not None and high is not None:
        close = ")" if bounds.get("high_open") else "]"
        return f" in [{low:g}, {high:g}{close}"
    if low is not None:
        return f" {'>' if bounds.get('low_open') else '≥'} {low:g}"
    return ""
