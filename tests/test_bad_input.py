"""Any input gives a valid result or an SknetError naming what is wrong, never a traceback: the config loader
and the dataset manifest reader under Hypothesis, plus flow parameters of the wrong type."""

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sknet.config import Config, load_config
from sknet.data.manifest import read_dataset_manifest
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


NEAR_MISSES = st.one_of(st.sampled_from(["0", "1", "2", "7", "8", "99", "-1", "01", " 1", "+1", "1_0", "\u0661",
                                         "192.168.0.0", "x"]), st.integers(-1, 9))


@st.composite
def rank_tables(draw) -> dict:
    """A table a launch could start (1-3 servers of 1-3 devices), often with a field or server id replaced by a near
    miss: a copy of another one, an id out of range or in another form."""
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    ranks = iter(draw(st.permutations(range(sum(sizes)))))
    servers = [{"server_id": f"10.0.0.{s}", "host_nic_ip": "reserve", "device": [
        {"device_id": str(d), "device_ip": f"192.168.{s}.{d}", "rank_id": str(next(ranks))} for d in range(size)]}
        for s, size in enumerate(sizes)]
    for _ in range(draw(st.integers(0, 2))):
        device = draw(st.sampled_from([device for server in servers for device in server["device"]]))
        key = draw(st.sampled_from(["device_id", "rank_id", "device_ip"]))
        device[key] = draw(st.one_of(NEAR_MISSES, st.sampled_from([d[key] for s in servers for d in s["device"]])))
    if draw(st.booleans()):
        draw(st.sampled_from(servers))["server_id"] = draw(st.sampled_from([s["server_id"] for s in servers] + [7]))
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": servers, "status": "completed"}


@FAST
@given(table=rank_tables())
def test_any_rank_table_is_refused_or_names_each_device_and_rank_once(tmp_path, table):
    """What `load_rank_table` accepts, a launch can start: ids are ASCII digit strings, rank ids exactly 0..size-1,
    device ids 0-7 once per server, each server and device IP once."""
    from sknet.launch.ranktable import RankTableError, load_rank_table

    path = tmp_path / "rank_table.json"
    path.write_text(json.dumps(table))
    try:
        servers = load_rank_table(path)["server_list"]
    except RankTableError:
        return
    devices = [device for server in servers for device in server["device"]]
    ids = [device[key] for device in devices for key in ("device_id", "rank_id")]
    assert all(isinstance(i, str) and i.isascii() and i.isdigit() and str(int(i)) == i for i in ids)
    assert sorted(int(device["rank_id"]) for device in devices) == list(range(len(devices)))
    for server in servers:
        physical = [int(device["device_id"]) for device in server["device"]]
        assert len(set(physical)) == len(physical) and all(0 <= d < 8 for d in physical)
    assert len({server["server_id"] for server in servers}) == len(servers)
    assert len({device["device_ip"] for device in devices}) == len(devices)


def test_flow_parameters_of_the_wrong_type_fail_before_any_task(tmp_path):
    from prefect.exceptions import ParameterTypeError

    from flows.sknet_train import sknet_train

    try:
        sknet_train.validate_parameters({"config": "cpu-smoke", "gate_threshold": "high", "overrides": [1, 2]})
    except ParameterTypeError as exc:
        assert "gate_threshold" in str(exc) and "overrides" in str(exc)
    else:
        raise AssertionError("wrong parameter types were accepted")
