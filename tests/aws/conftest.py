"""Fixtures for the AWS backend: moto's server on 127.0.0.1 as every AWS API.

- ``moto_aws`` (session): one moto server. moto keeps its state per process, so
- ``aws_env`` (per test): resets that state, pins every request to moto's default account,
  pins ECS tasks so that DescribeTasks does not walk them to STOPPED by itself (DESIGN.md),
  and points boto3 at the server through ``AWS_ENDPOINT_URL`` (worker subprocesses inherit
  it). Yields the endpoint URL.
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
    # One account for every request. Otherwise moto finds the account of each first request
    # after a reset by looking the access key up in the IAM backend of every partition,
    # creating six IAM backends that each load the ~1,300 AWS-managed policies
    # (MOTO_IAM_LOAD_MANAGED_POLICIES): about 1 s per test. The tests use one account only.
    monkeypatch.setenv("MOTO_ACCOUNT_ID", "123456789012")
    moto_api(
        endpoint,
        "state-manager/set-transition",
        {
            "model_name": "ecs::task",
            "transition": {"progression": "manual", "times": 1_000_000_000},
        },
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    yield endpoint


# Appended: fixtures for the setup and doctor tests.
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starburst_executor.aws.client import Aws


@pytest.fixture(scope="session")
def _shared_boto3_session() -> object:
    """One boto3 session for the tests' ``Aws`` clients: it caches the service models, so a
    client costs milliseconds instead of ~0.15 s. Credentials are resolved lazily, inside the
    first test, after the autouse ``env`` fixture has set the dummy ones."""
    import boto3

    return boto3.session.Session()


@pytest.fixture
def moto_one_account(aws_env: str) -> str:
    """moto (in this process) pinned to its default account, 123456789012: what ``aws_env``
    does now for every AWS test; kept as the name the setup and doctor tests ask for."""
    return aws_env


@pytest.fixture
def moto_aws_client(moto_one_account: str, _shared_boto3_session: object) -> Aws:
    """An :class:`~starburst_executor.aws.client.Aws` on moto in us-east-1 that never sleeps
    between retries."""
    from starburst_executor.aws.client import Aws

    return Aws("us-east-1", session=_shared_boto3_session, retry_sleep=lambda _: None)


@pytest.fixture
def moto_serves_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let object requests through a bucket whose policy denies plain HTTP, as AWS does for
    the TLS requests real clients make (:func:`iam_world.bucket_permission_over_tls`)."""
    from iam_world import bucket_permission_over_tls
    from moto.s3.models import FakeBucket

    monkeypatch.setattr(FakeBucket, "get_permission", bucket_permission_over_tls)


# Appended: Docker and the project's worker image (tests/containers.py).


@pytest.fixture(scope="session")
def docker() -> str:
    """The docker executable, with a daemon answering (started if need be). FAILS in CI
    (``CI`` set) when docker is unavailable, skips elsewhere."""
    from containers import require_docker

    return require_docker()


@pytest.fixture(scope="session")
def worker_image(docker: str) -> str:
    """The project's worker image built from this checkout on the offline base image
    (``starburst-worker-test:<hash>``, reused while the sources are unchanged)."""
    from containers import project_image

    return project_image()
