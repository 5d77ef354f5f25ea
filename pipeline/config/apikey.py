"""The API key: given to the Python API, else read from the environment variable the
job names (`[endpoint] api_key_env`). Never stored, logged or echoed."""

from __future__ import annotations

import os

from pipeline.config.settings import JobConfig
from pipeline.errors import UsageError

FAKE_API_KEY = "fake-key"  # the built-in fake endpoint takes any key


def read_api_key(config: JobConfig, given: str | None = None) -> str:
    """The key: `given` (the Python API's api_key=), else the environment variable."""
    if config.endpoint.is_fake:
        return FAKE_API_KEY
    if given:
        return given
    key = os.environ.get(config.endpoint.api_key_env, "").strip()
    if not key:
        raise UsageError(
            f"no API key: set the environment variable {config.endpoint.api_key_env} "
            "([endpoint] api_key_env names it)"
        )
    return key
