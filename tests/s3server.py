"""The suite's S3 server (launcher in infra/s3server.py) and the fake secret it runs with."""

from infra.s3server import S3Server  # noqa: F401  (conftest imports it from here)

SECRET_KEY = "sknet-test-secret-Zq8xV1"  # must never show up in logs or errors
