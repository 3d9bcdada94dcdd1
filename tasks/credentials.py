"""Storage credentials from a Prefect `AwsCredentials` block (prefect-aws), for the flow and its ranks."""

from __future__ import annotations

import os

from sknet.errors import ConfigError


def use_aws_credentials_block(name: str) -> None:
    """Load block `name` and hand it to boto3 and the ranks through this process's environment."""
    try:
        from prefect_aws import AwsCredentials
    except ImportError:
        raise ConfigError(f"aws_credentials_block={name!r}: the worker needs the prefect-aws package "
                          "(pip install prefect-aws), or leave the parameter empty to use its environment") from None
    credentials = AwsCredentials.load(name)
    secret = credentials.aws_secret_access_key
    endpoint = getattr(credentials.aws_client_parameters, "endpoint_url", None)
    values = {
        "AWS_ACCESS_KEY_ID": credentials.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else None,
        "AWS_SESSION_TOKEN": credentials.aws_session_token,
        "AWS_PROFILE": credentials.profile_name,
        "AWS_DEFAULT_REGION": credentials.region_name,
        "AWS_ENDPOINT_URL": str(endpoint) if endpoint else None,
    }
    for key, value in values.items():  # the block replaces the worker's AWS settings, none are mixed in
        if value:
            os.environ[key] = value
        else:
            os.environ.pop(key, None)
