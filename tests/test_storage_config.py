"""The storage.* keys reach the S3 client a store is opened with."""

import pytest

from sknet.config import load_config
from sknet.errors import ConfigError
from sknet.storage import S3_MAX_ATTEMPTS, store_from_config

S3_SECTION = ["storage.uri=s3://bucket/runs", "storage.region=us-east-1"]


def test_max_attempts_defaults_to_the_clients_own_default():
    cfg = load_config("cpu-smoke", S3_SECTION)
    assert cfg.storage.max_attempts == S3_MAX_ATTEMPTS == 9
    assert store_from_config(cfg.storage).client.meta.config.retries["total_max_attempts"] == 9


def test_max_attempts_is_every_try_of_a_request_the_first_included():
    cfg = load_config("cpu-smoke", [*S3_SECTION, "storage.max_attempts=3"])
    retries = store_from_config(cfg.storage).client.meta.config.retries
    assert retries == {"mode": "adaptive", "total_max_attempts": 3}


def test_max_attempts_below_one_is_rejected():
    with pytest.raises(ConfigError, match=r"storage\.max_attempts: got 0, expected an integer ≥ 1"):
        load_config("cpu-smoke", ["storage.max_attempts=0"])
