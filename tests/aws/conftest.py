"""Fixtures for the AWS backend: moto's server on 127.0.0.1 as every AWS API.

- ``moto_aws`` (session): one moto server. moto keeps its state per process, so
- ``aws_env`` (per test): resets that state, pins ECS tasks so that DescribeTasks does not
  walk them to STOPPED by itself (DESIGN.md), and points boto3 at the server through
  ``AWS_ENDPOINT_URL`` (worker subprocesses inherit it). Yields the endpoint URL.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator

import pytest

from servers import MotoServer


def moto_api(endpoint: str, path: str, body: dict[str, object] | None = None) -> None:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(f"{endpoint}/moto-api/{path}", data=data, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@pytest.fixture(scope="session")
def moto_aws() -> Iterator[MotoServer]:
    # AWS-managed IAM policies (AmazonECSTaskExecutionRolePolicy ...) exist only with this.
    os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    with MotoServer() as server:
        yield server


@pytest.fixture
def aws_env(moto_aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    endpoint = moto_aws.endpoint_url
    moto_api(endpoint, "reset")
    moto_api(endpoint, "state-manager/set-transition", {
        "model_name": "ecs::task",
        "transition": {"progression": "manual", "times": 1_000_000_000},
    })
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield endpoint
