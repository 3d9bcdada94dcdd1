"""Any input gives a valid result or an SknetError naming what is wrong, never a traceback: the config loader
and the dataset manifest reader under Hypothesis, plus flow parameters of the wrong type."""

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sknet.config import Config, load_config
from sknet.data.stage import read_dataset_manifest
from sknet.errors import SknetError
from sknet.storage import LocalStore

SECTIONS = ["data", "model", "train", "launch", "gate", "export", "storage"]
KEYS = ["uri", "epochs", "batch_size", "base_lr", "name", "stem", "ranks", "threshold", "backend", "max_loss",
        "image_size", "nodes", "master_port", "loss_scale_mode", "endpoint_url", "unknown"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["1e9", "nan", ".inf", "cifar", "sknet50", "O2", "-1", "0x10", "~"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5),
                                                                                          inner, max_size=3),
                      max_leaves=6)
documents = st.one_of(values, st.dictionaries(st.sampled_from(SECTIONS + ["other"]),
                                              st.one_of(values, st.dictionaries(st.sampled_from(KEYS), values,
                                                                                max_size=4)), max_size=4))
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(document=documents)
def test_any_yaml_config_loads_or_is_refused_with_a_config_error(tmp_path, document):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        assert isinstance(load_config(path), Config)
    except SknetError:
        pass


@FAST
@given(text=st.text(max_size=200))
def test_any_text_as_a_config_file_loads_or_is_refused(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except SknetError:
        pass


@FAST
@given(items=st.lists(st.tuples(st.sampled_from([f"{s}.{k}" for s in SECTIONS for k in KEYS] + ["", ".", "a..b"]),
                                st.text(max_size=10)), max_size=4))
def test_any_command_line_override_loads_or_is_refused(items):
    try:
        load_config("cpu-smoke", [f"{key}={text}" for key, text in items])
    except SknetError:
        pass


DIGEST = "0" * 64
manifests = st.one_of(
    st.binary(max_size=64),
    values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["format", "digest", "files", "synthetic"]),
                    st.one_of(values, st.dictionaries(st.text(max_size=30), values, max_size=3)),
                    max_size=4).map(lambda v: json.dumps(v).encode()),
)


@FAST
@given(manifest=manifests)
def test_any_manifest_in_a_bucket_is_read_or_refused_with_a_clear_error(tmp_path, manifest):
    store = LocalStore(tmp_path / "bucket")
    store.put_bytes(manifest, f"{DIGEST}/manifest.json")
    try:
        read_dataset_manifest(store, DIGEST)
    except SknetError as exc:
        assert str(exc)


def test_flow_parameters_of_the_wrong_type_fail_before_any_task(tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.sknet_train import sknet_train

    try:
        sknet_train.validate_parameters({"config": "cpu-smoke", "gate_threshold": "high", "overrides": [1, 2]})
    except ParameterTypeError as exc:
        assert "gate_threshold" in str(exc) and "overrides" in str(exc)
    else:
        raise AssertionError("wrong parameter types were accepted")
