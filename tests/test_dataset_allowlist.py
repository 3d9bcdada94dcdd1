"""Issue 18 §4: a run trains only on a dataset under `data.allowed_prefixes` (default `<storage.uri>/datasets/`), and
the trigger on `sknet.dataset.staged` listens to the store's own datasets only. (The deployed trigger, a real server
and worker: tests/test_e2e.py.)"""

from pathlib import Path

import pytest
import yaml

from sknet.config import load_config
from sknet.data.allowlist import DatasetNotAllowed, is_under, refuse_unless_allowed
from sknet.data.source import resolve_dataset
from sknet.data.stage import stage
from sknet.storage import LocalStore

REPO = Path(__file__).resolve().parent.parent
DIGEST = "ab" * 32


@pytest.mark.parametrize("uri, prefix", [
    (f"s3://b/datasets/cifar10/{DIGEST}", "s3://b/datasets/"),
    (f"s3://b/datasets/cifar10/{DIGEST}/", "s3://b/datasets"),
    (f"s3://b/p/datasets/cifar10/{DIGEST}", "s3://b/p/datasets/"),
    (f"s3://b/datasets/cifar10/{DIGEST}", "s3://b"),
    ("file:///data/store/datasets/cifar10/x", "/data/store/datasets/"),
    ("/data/store/datasets/cifar10/x", "file:///data/store/datasets"),
    ("/data/cifar10", "/data/cifar10"),
])
def test_a_dataset_under_a_prefix_is_allowed(uri, prefix):
    assert is_under(uri, prefix)


@pytest.mark.parametrize("uri, prefix", [
    (f"s3://b/datasets-evil/cifar10/{DIGEST}", "s3://b/datasets/"),  # a string prefix, not a path prefix
    (f"s3://b/datasets-evil/cifar10/{DIGEST}", "s3://b/datasets"),
    (f"s3://b-evil/datasets/cifar10/{DIGEST}", "s3://b/datasets/"),
    (f"s3://other/datasets/cifar10/{DIGEST}", "s3://b/datasets/"),
    (f"file:///b/datasets/cifar10/{DIGEST}", "s3://b/datasets/"),
    ("/data/store/datasets/../../evil/cifar10/x", "/data/store/datasets/"),
    ("file:///data/store/datasets/../elsewhere", "file:///data/store/datasets/"),
    ("/data/store/datasets-evil/x", "/data/store/datasets"),
])
def test_a_dataset_elsewhere_is_not(uri, prefix):
    assert not is_under(uri, prefix)


@pytest.mark.parametrize("uri, reason", [
    (f"s3://b/datasets/../evil/cifar10/{DIGEST}", "'..'"),
    (f"s3://b/datasets/./cifar10/{DIGEST}", "'.'"),
    (f"s3://b/datasets//cifar10/{DIGEST}", "empty"),
    (f"s3://b//datasets/cifar10/{DIGEST}", "empty"),
    (f"s3://b/datasets/%2e%2e/evil/cifar10/{DIGEST}", "percent-encoding"),
    (f"s3://b/datasets%2Fcifar10/{DIGEST}", "percent-encoding"),
    ("file:///data/store/datasets/%2E%2E/x", "percent-encoding"),
    (f"https://evil.example/datasets/cifar10/{DIGEST}", "expected an s3:// or file:// URI or a local path"),
])
def test_a_dataset_uri_that_could_mean_another_place_is_refused_naming_why_and_the_prefixes(uri, reason):
    with pytest.raises(DatasetNotAllowed) as refused:
        refuse_unless_allowed(uri, ["s3://b/datasets/", "/data/store/datasets/"])
    message = str(refused.value)
    assert uri in message and reason in message and "['s3://b/datasets/', '/data/store/datasets/']" in message


def test_a_symlink_under_the_prefix_to_elsewhere_is_not_under_it(tmp_path):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "datasets" / "link").symlink_to(tmp_path / "elsewhere")
    assert not is_under(str(tmp_path / "datasets" / "link"), f"file://{tmp_path / 'datasets'}/")
    assert is_under(str(tmp_path / "datasets" / "real"), f"file://{tmp_path / 'datasets'}/")


def test_the_default_prefix_is_the_stores_datasets_and_follows_storage_uri():
    cfg = load_config("cpu-smoke", ["storage.uri=s3://bucket/"])
    assert cfg.data.allowed_prefixes is None and cfg.allowed_dataset_prefixes == ("s3://bucket/datasets/",)
    moved = cfg.override({"storage.uri": "s3://other/p"})
    assert moved.allowed_dataset_prefixes == ("s3://other/p/datasets/",)
    assert moved.digest() == load_config("cpu-smoke", ["storage.uri=s3://other/p"]).digest()
    given = load_config("cpu-smoke", ["data.allowed_prefixes=[s3://shared/datasets/, /data/cifar10]"])
    assert given.allowed_dataset_prefixes == ("s3://shared/datasets/", "/data/cifar10")


@pytest.mark.parametrize("storage_uri", ["file://work/store", "work/store/", "file://{cwd}/work/store"])
def test_the_stores_own_datasets_are_allowed_by_default_however_its_uri_is_written(storage_uri, tmp_path,
                                                                                   monkeypatch):
    """`make run` and `make up` stage into <storage.uri>/datasets/cifar10 and train on it with no allowed_prefixes."""
    monkeypatch.chdir(tmp_path)
    staged = f"{LocalStore('work/store/datasets/cifar10').uri}/{DIGEST}"  # as `sknet data stage` prints it
    cfg = load_config("cpu-smoke", {"data.uri": staged, "storage.uri": storage_uri.format(cwd=tmp_path)})
    refuse_unless_allowed(cfg.data.uri, cfg.allowed_dataset_prefixes)
    with pytest.raises(DatasetNotAllowed):
        refuse_unless_allowed(f"{LocalStore('work/elsewhere/cifar10').uri}/{DIGEST}", cfg.allowed_dataset_prefixes)


def test_a_dataset_outside_the_prefixes_is_refused_before_anything_is_read(synthetic_data, tmp_path):
    """The same real dataset: refused beside the store's datasets/, fetched once its prefix is allowed."""
    uri = stage(str(synthetic_data), LocalStore(tmp_path / "store" / "datasets-evil" / "cifar10"))
    cfg = load_config("cpu-smoke", {"data.uri": uri, "storage.uri": f"file://{tmp_path / 'store'}"})
    with pytest.raises(DatasetNotAllowed, match=rf"dataset '{uri}' refused: .* data\.allowed_prefixes "
                                                rf"\['file://{tmp_path}/store/datasets/'\]"):
        resolve_dataset(cfg, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    allowed = cfg.override({"data.allowed_prefixes": [f"{tmp_path}/store/datasets-evil/"]})
    assert resolve_dataset(allowed, tmp_path / "cache").digest == uri.rsplit("/", 1)[1]


def test_a_refused_dataset_is_a_permanent_failure_never_retried():
    from prefect.states import Failed

    from tasks._support import transient_only

    error = DatasetNotAllowed("dataset 's3://evil/x' refused: …")
    assert transient_only(None, None, Failed(data=error)) is False


@pytest.mark.parametrize("deployment", ["nightly", "smoke"])
def test_the_trigger_matches_only_datasets_of_the_store_it_was_deployed_with(deployment, monkeypatch):
    """prefect.yaml's trigger as `prefect deploy` templates it from the environment, matched by Prefect's own code."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.events.schemas.events import Resource
    from prefect.utilities.templating import apply_values

    monkeypatch.setenv("SKNET_PUBLISH_TO", "s3://bucket/team")
    document = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    (spec,) = next(d for d in document["deployments"] if d["name"] == deployment)["triggers"]
    trigger = DeploymentEventTrigger(**apply_values(spec, {}, remove_notset=False))

    def starts_a_run(uri: str) -> bool:
        return trigger.match.matches(Resource({"prefect.resource.id": uri}))

    assert starts_a_run(f"s3://bucket/team/datasets/cifar10/{DIGEST}")
    assert not starts_a_run(f"s3://bucket/team/datasets-evil/cifar10/{DIGEST}")
    assert not starts_a_run(f"s3://bucket/datasets/cifar10/{DIGEST}")
    assert not starts_a_run(f"s3://elsewhere/team/datasets/cifar10/{DIGEST}")
    assert trigger.parameters == {"dataset_uri": "{{ event.resource.id }}"}  # filled per event, not at deploy time
