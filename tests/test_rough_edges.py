"""Rough edges a new user hits: argument errors that say what to do, a worker loss that names
its exit code or signal, ``AWS_REGION``, a writable home, a malformed session id, an endpoint
that is not S3, and output on terminals that cannot show every character.

The command-line cases (``--version``, pipes, tables) are in ``tests/test_cli.py``.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest
from detached_support import subprocess_env

from starburst_executor import (
    DetachedExecutor,
    StarburstExecutor,
    StoreConfigError,
    WorkerLostError,
)
from starburst_executor._manager import Pacing
from starburst_executor.aws.client import Aws
from starburst_executor.stores import open_store
from starburst_executor.stores.s3 import make_s3_client

FAST = Pacing(poll_max=0.1)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_workers": "x"}, TypeError, "max_workers must be an int or None, not str 'x'"),
        ({"max_workers": 2.5}, TypeError, "max_workers must be an int or None, not float 2.5"),
        ({"max_workers": True}, TypeError, "max_workers must be an int"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout must be >= 0 seconds"),
        ({"idle_timeout": "60"}, TypeError, "idle_timeout must be a number of seconds"),
        ({"max_attempts": 1.5}, TypeError, "max_attempts must be an int"),
        ({"name": 3}, TypeError, "name must be a string"),
    ],
)
def test_bad_constructor_arguments_say_what_was_wrong(
    kwargs: dict[str, Any], error: type[Exception], words: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        StarburstExecutor(store=(tmp_path / "store").as_uri(), **kwargs)
    assert not (tmp_path / "store").exists()  # refused before anything was created


def test_map_with_a_chunksize_that_is_not_an_int_says_so(tmp_path: Path) -> None:
    with StarburstExecutor(max_workers=1, store=(tmp_path / "store").as_uri()) as ex:
        with pytest.raises(TypeError, match="chunksize must be an int, not str 'a'"):
            ex.map(tasks.square, range(3), chunksize="a")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"use chunksize=2"):
            ex.map(tasks.square, range(3), chunksize=2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("sid", ["../x", "", "20261121-081500-3FA9C2", "20261121-081500"])
def test_attach_to_a_malformed_session_id_names_the_expected_format(
    sid: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="expected YYYYMMDD-HHMMSS-xxxxxx"):
        DetachedExecutor.attach(sid, store=(tmp_path / "store").as_uri())
    assert not (tmp_path / "store").exists()


def test_an_unwritable_starburst_home_says_which_variable_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "file-not-dir"
    home.write_text("")  # a file where the directory should be: fails even for root
    monkeypatch.setenv("STARBURST_HOME", str(home / "sub"))
    with pytest.raises(PermissionError, match="set STARBURST_HOME to a directory you can write"):
        StarburstExecutor(max_workers=1, store=(tmp_path / "store").as_uri())


@pytest.mark.slow
def test_aws_region_is_honoured_like_aws_default_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert make_s3_client().meta.region_name == "eu-west-3"
    assert Aws().region == "eu-west-3"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")  # AWS_REGION wins, as in the AWS CLI
    assert Aws().region == "eu-west-3"


@pytest.fixture
def html_server() -> Iterator[str]:
    """A web server that answers everything with HTML pages (as a console or a proxy does)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_endpoint_that_is_not_s3_is_named_as_such(
    html_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", html_server)
    store = open_store("s3://bucket/prefix")
    for action in (store.now, lambda: store.put("k", b"v"), lambda: store.get("k")):
        with pytest.raises(StoreConfigError) as info:
            action()
        message = str(info.value)
        assert f"{html_server} is not an S3 endpoint" in message
        assert "AWS_ENDPOINT_URL_S3" in message and "does not exist" not in message


@pytest.mark.slow
def test_worker_lost_error_names_the_signal_that_killed_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    marks = tmp_path / "marks"
    marks.mkdir()
    with StarburstExecutor(
        max_workers=1,
        max_attempts=2,
        lease_seconds=30,
        pacing=FAST,
        store=(tmp_path / "store").as_uri(),
    ) as ex:
        fut = ex.submit(tasks.kill_worker_always, str(marks))
        with pytest.raises(WorkerLostError) as info:
            fut.result(timeout=60)
    message = str(info.value)
    assert message.count("(killed by SIGKILL)") == 2, message


def test_an_unwritable_default_store_says_which_variable_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "file-not-dir"
    home.write_text("")
    monkeypatch.setenv("STARBURST_HOME", str(home))
    monkeypatch.setenv("STARBURST_SECRET_KEY", "ab" * 16)
    with pytest.raises(StoreConfigError, match="set STARBURST_HOME"):
        StarburstExecutor(max_workers=1)
