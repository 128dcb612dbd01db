"""Shared fixtures: real S3 servers on loopback, a clean environment, and the ``store`` matrix.

- ``seaweed`` / ``moto_s3``: one server per test session (see ``tests/servers.py``), each with
  the bucket :data:`TEST_BUCKET` created. A missing ``weed`` binary FAILS the tests that need
  it: CI must never skip the real-server tests silently.
- ``env`` (autouse): dummy AWS credentials, ``us-east-1``, no profile, endpoint or config file
  from the developer's machine, and ``STARBURST_HOME`` in the test's temporary directory.
- ``store``: a fresh, empty store per test, once per backend: ``local``, ``seaweed``, ``moto``,
  ``memory`` (the in-process fake the unit tests use: held to the same contract).
- ``executor_store`` / ``make_executor``: a store URL for executors, once per backend
  (``local``, ``seaweed``), with the environment their worker processes inherit; and a
  factory of executors on it that shuts each one down at teardown.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import MotoServer, SeaweedServer, WeedNotFoundError, find_weed

from starburst_executor.stores.base import Store

TEST_BUCKET = "starburst-test"

STORE_KINDS = ["local", "seaweed", "moto", "memory"]

_SCRUBBED_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "STARBURST_STORE",
    "STARBURST_SECRET_KEY",
)


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Isolate every test from the machine's AWS and starburst settings."""
    for name in _SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Nonexistent files: no ~/.aws/config or credentials can leak into a test.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no 1 s IMDS probe off EC2
    monkeypatch.setenv("STARBURST_HOME", str(tmp_path / "starburst-home"))
    yield


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """A SeaweedFS server for the whole session, with :data:`TEST_BUCKET` created."""
    try:
        weed = find_weed()
    except WeedNotFoundError as exc:
        missing = f"{exc}. The real-server tests are required, not optional."
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)
    with SeaweedServer(weed) as server:
        server.create_bucket(TEST_BUCKET)
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoServer]:
    """moto's S3 server for the whole session, with :data:`TEST_BUCKET` created."""
    with MotoServer() as server:
        server.create_bucket(TEST_BUCKET)
        yield server


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which backend the ``store`` fixture builds."""
    return str(request.param)


@pytest.fixture
def store(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh, empty store: a new directory, or a new unique prefix in the test bucket."""
    if store_kind == "local":
        from starburst_executor.stores.local import LocalStore

        instance: Store = LocalStore(tmp_path / "store")
    elif store_kind == "memory":
        from starburst_executor.stores.memory import MemoryStore

        instance = MemoryStore()
    else:
        from starburst_executor.stores.s3 import S3Store

        server = request.getfixturevalue("seaweed" if store_kind == "seaweed" else "moto_s3")
        # A 10 s read timeout (production: 60 s) so that a stalled request fails fast here.
        client = server.client(read_timeout=10)
        instance = S3Store(TEST_BUCKET, prefix=f"t/{uuid.uuid4().hex}", client=client)
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture
def free_port() -> int:
    """A loopback TCP port where nothing listens (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- executor fixtures (tests/test_executor*.py, tests/test_lifecycle.py) ------------------------

EXECUTOR_BACKENDS = ["local", "seaweed"]
_TESTS_DIR = Path(__file__).resolve().parent
_REPO_DIR = _TESTS_DIR.parent


# Every executor test runs end to end on a directory store and again on SeaweedFS, where it
# costs as much again (worker processes, S3 round trips). The SeaweedFS repeats are marked
# slow (they run in CI, ``pytest`` without ``-m``), except these, which keep the S3 path of
# submit and map in the quick run; the store contract suite proves the S3 store itself on
# every run.
_QUICK_ON_SEAWEED = frozenset(
    {
        "test_submit_returns_the_result[seaweed]",
        "test_map_returns_results_in_order[seaweed-100]",
    }
)
# The store contract's thread races on SeaweedFS: contenders for one key wait about 1 s
# each there (DESIGN.md), so they take seconds; the memory and directory stores race in the
# quick run.
_SLOW_ON_SEAWEED = frozenset(
    {
        "test_racing_put_if_absent_has_exactly_one_winner",
        "test_compare_and_swap_loops_lose_no_update",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        executor_repeat = params.get("executor_store") == "seaweed"
        store_race = params.get("store_kind") == "seaweed" and (
            getattr(item, "originalname", "") in _SLOW_ON_SEAWEED
        )
        if (executor_repeat and item.name not in _QUICK_ON_SEAWEED) or store_race:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=EXECUTOR_BACKENDS)
def executor_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A store URL for a ``StarburstExecutor``: a fresh directory, or a fresh prefix in the
    SeaweedFS test bucket.

    Worker processes inherit ``os.environ``, so everything they need is set here: the S3
    endpoint (``AWS_ENDPOINT_URL_S3``, as a user would point boto3 at a server) and a
    ``PYTHONPATH`` with the package and ``tests/`` (workers import the tests' task modules by
    name, as a user's workers import the user's modules).
    """
    paths = [str(_REPO_DIR), str(_TESTS_DIR)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    if request.param == "local":
        return (tmp_path / "store").as_uri()
    server = request.getfixturevalue("seaweed")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
    return f"s3://{TEST_BUCKET}/executor/{uuid.uuid4().hex}"


@pytest.fixture
def make_executor(executor_store: str) -> Iterator[Callable[..., Any]]:
    """A factory of ``StarburstExecutor``s on ``executor_store`` (``max_workers=2`` unless
    given); every executor it made is shut down (waiting, queued work cancelled) at teardown."""
    from starburst_executor import StarburstExecutor

    made: list[StarburstExecutor] = []

    def make(**kwargs: Any) -> StarburstExecutor:
        kwargs.setdefault("store", executor_store)
        kwargs.setdefault("max_workers", 2)
        ex = StarburstExecutor(**kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def reap() -> Iterator[list[str]]:
    """Session ids whose leftover processes are killed at teardown (a failed test must not
    leave workers behind for minutes)."""
    from detached_support import session_processes

    sids: list[str] = []
    yield sids
    for sid in sids:
        for pid in session_processes(sid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
