"""The ``starburst`` command line, run as a user runs it: the installed console script, in a
subprocess, against sessions that a ``DetachedExecutor`` in the test process created.

The commands find a session's store through the per-user index in ``STARBURST_HOME`` (the
``env`` fixture points it at the test's directory, and the subprocesses inherit it).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import executor_tasks as tasks
import pytest
from detached_support import session_processes, subprocess_env, wait_until

from starburst_executor import DetachedExecutor, SessionError, TaskResult, open_store
from starburst_executor._manager import Pacing
from starburst_executor.config import SECRET_ENV, secret_key
from starburst_executor.protocol import Codec
from starburst_executor.sessions import SessionReader

FAST = Pacing(poll_max=0.1)
SUBCOMMANDS = ["sessions", "status", "collect", "logs", "cancel", "cleanup", "prune", "worker"]
EXIT_OK, EXIT_NOT_FOUND, EXIT_TASKS_FAILED, EXIT_TIMEOUT = 0, 3, 4, 5


def _console_script() -> list[str]:
    """The ``starburst`` script that ``pip install`` put next to this interpreter (a pyenv
    shim on PATH could run another Python), else the one on PATH, else the module."""
    beside = Path(sys.executable).parent / "starburst"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("starburst")
    return [found] if found else [sys.executable, "-m", "starburst_executor.cli"]


STARBURST = _console_script()


def starburst(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARBURST, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        check=False,
    )


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A directory store; workers (and the CLI) get ``tests/`` on their PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    return (tmp_path / "store").as_uri()


@pytest.fixture
def made() -> Iterator[list[DetachedExecutor]]:
    """Executors whose sessions are cleaned up (data deleted) at teardown."""
    executors: list[DetachedExecutor] = []
    yield executors
    for ex in executors:
        with contextlib.suppress(SessionError):  # a test may have deleted it already
            ex.cleanup(delete_data=True)
        for pid in session_processes(ex.session_id):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def finished(store_url: str, made: list[DetachedExecutor]) -> tuple[DetachedExecutor, list[str]]:
    """A session of three finished tasks: one printed a line, one failed, one returned 3.
    Returns the executor and the task ids, in submission order."""
    ex = DetachedExecutor(
        max_workers=1, store=store_url, name="cli-test", pacing=FAST, task_timeout=60
    )
    made.append(ex)
    futures: list[Future[Any]] = [
        ex.submit(print, "hello from a task"),
        ex.submit(tasks.raise_at, 5, 5),
        ex.submit(tasks.add, 1, 2),
    ]
    for f in futures:
        f.exception(timeout=30)
    ids = [r.task_id for r in ex.collect(wait=True, timeout=30, poll_interval=0.05)]
    return ex, ids


# -- listing and status ------------------------------------------------------------------------


def test_sessions_lists_the_session_as_a_table_and_as_json(
    finished: tuple[DetachedExecutor, list[str]],
) -> None:
    ex, _ = finished
    proc = starburst("sessions", "--store", ex.store.url)
    assert proc.returncode == EXIT_OK, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["SESSION", "NAME", "STATE"]
    row = next(r for r in rows if r.startswith(ex.session_id))
    assert row.split()[1:3] == ["cli-test", "finished"]

    proc = starburst("sessions", "--store", ex.store.url, "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    entry = next(s for s in json.loads(proc.stdout) if s["session_id"] == ex.session_id)
    assert {k: entry[k] for k in ("total", "completed", "failed", "pending", "running")} == {
        "total": 3,
        "completed": 2,
        "failed": 1,
        "pending": 0,
        "running": 0,
    }
    assert entry["done"] is True and entry["name"] == "cli-test"


def test_status_shows_counts_as_a_table_and_as_json(
    finished: tuple[DetachedExecutor, list[str]],
) -> None:
    ex, _ = finished
    proc = starburst("status", ex.session_id)  # the store comes from the per-user index
    assert proc.returncode == EXIT_OK, proc.stderr
    table = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert table["Session"].strip() == f"{ex.session_id} (cli-test)"
    assert table["Store"].strip() == ex.store.url
    assert (table["Total tasks"].strip(), table["Completed"].strip(), table["Failed"].strip()) == (
        "3",
        "2",
        "1",
    )

    proc = starburst("status", ex.session_id, "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    data = json.loads(proc.stdout)
    assert (
        data["session_id"],
        data["state"],
        data["total"],
        data["completed"],
        data["failed"],
    ) == (ex.session_id, "finished", 3, 2, 1)
    assert data["progress"] == 100.0


# -- collect -----------------------------------------------------------------------------------


def test_collect_writes_the_results_and_exits_4_when_a_task_failed(
    finished: tuple[DetachedExecutor, list[str]], tmp_path: Path
) -> None:
    ex, ids = finished
    out = tmp_path / "results.pkl"
    proc = starburst("collect", ex.session_id, "-o", str(out), "--wait")
    assert proc.returncode == EXIT_TASKS_FAILED, proc.stderr
    assert "wrote 3 results (1 failed)" in proc.stdout
    assert f"{ids[1]}: ValueError" in proc.stdout
    results = pickle.loads(out.read_bytes())
    assert all(isinstance(r, TaskResult) for r in results)
    assert [r.task_id for r in results] == ids
    assert [r.value for r in results] == [None, None, 3]
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, ValueError) and results[1].error.args == ("bad item", 5)
    assert results[0].output == "hello from a task\n"


def test_collect_exits_0_when_every_task_succeeded(
    store_url: str, made: list[DetachedExecutor], tmp_path: Path
) -> None:
    ex = DetachedExecutor(max_workers=2, store=store_url, pacing=FAST)
    made.append(ex)
    for i in range(4):
        ex.submit(tasks.square, i)
    ex.detach()
    out = tmp_path / "results.pkl"
    proc = starburst("collect", ex.session_id, "-o", str(out), "--wait", "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert json.loads(proc.stdout)["collected"] == 4
    assert [r.value for r in pickle.loads(out.read_bytes())] == [0, 1, 4, 9]


def test_collect_wait_timeout_exits_5(
    store_url: str, made: list[DetachedExecutor], tmp_path: Path
) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_url, pacing=FAST)
    made.append(ex)
    ex.submit(tasks.wait_for_gate, str(tmp_path / "gate"), 1)
    ex.detach()
    out = tmp_path / "results.pkl"
    proc = starburst("collect", ex.session_id, "-o", str(out), "--wait", "--timeout", "0.5")
    assert proc.returncode == EXIT_TIMEOUT, proc.stderr
    assert "0 of 1 tasks finished" in proc.stderr
    assert not out.exists()
    (tmp_path / "gate").touch()


# -- logs --------------------------------------------------------------------------------------


def test_logs_show_what_tasks_printed(finished: tuple[DetachedExecutor, list[str]]) -> None:
    ex, _ = finished
    proc = starburst("logs", ex.session_id)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert any(
        line.startswith("[local-") and line.endswith("hello from a task")
        for line in proc.stdout.splitlines()
    ), proc.stdout


def test_logs_of_one_task_show_its_output_and_traceback(
    finished: tuple[DetachedExecutor, list[str]],
) -> None:
    ex, ids = finished
    proc = starburst("logs", ex.session_id, "--task", ids[0])
    assert proc.returncode == EXIT_OK, proc.stderr
    assert f"task {ids[0]} (worker local-" in proc.stdout
    assert "hello from a task" in proc.stdout
    assert "failed" not in proc.stdout

    proc = starburst("logs", ex.session_id, "--task", ids[1])
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "(no output)" in proc.stdout
    assert "failed: ValueError: ('bad item', 5)" in proc.stdout
    assert "Traceback (most recent call last)" in proc.stdout
    assert "in raise_at" in proc.stdout  # the remote traceback names the task's function
    assert "hello from a task" not in proc.stdout

    proc = starburst("logs", ex.session_id, "--task", "not-a-task")
    assert proc.returncode == 2
    assert "BATCH/INDEX" in proc.stderr


# -- cancel and cleanup ------------------------------------------------------------------------


@pytest.mark.slow
def test_cancel_then_cleanup_with_delete_data(
    store_url: str, made: list[DetachedExecutor], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    ex = DetachedExecutor(max_workers=1, store=store_url, pacing=FAST, task_timeout=60)
    made.append(ex)
    sid = ex.session_id
    for i in range(3):
        ex.submit(tasks.wait_for_gate, str(gate), i)
    wait_until(lambda: ex.status().running == 1, what="one running task")
    ex.detach()

    proc = starburst("cancel", sid)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert f"session {sid} cancelled" in proc.stdout
    assert json.loads(starburst("status", sid, "--json").stdout)["state"] == "cancelled"

    proc = starburst("cleanup", sid, "--delete-data")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert f"session {sid} closed, data deleted" in proc.stdout
    assert session_processes(sid) == []  # the worker blocked on the gate was stopped

    proc = starburst("status", sid)
    assert proc.returncode == EXIT_NOT_FOUND
    assert "deleted" in proc.stderr and sid in proc.stderr
    listed = json.loads(starburst("sessions", "--json", "--store", store_url).stdout)
    assert [s["state"] for s in listed if s["session_id"] == sid] == ["deleted"]
    gate.touch()


@pytest.mark.slow
def test_unknown_session_exits_3_naming_the_store_and_how_to_list(store_url: str) -> None:
    for command in (["status"], ["collect", "-o", os.devnull], ["logs"], ["cancel"], ["cleanup"]):
        proc = starburst(command[0], "20200101-000000-abcdef", *command[1:], "--store", store_url)
        assert proc.returncode == EXIT_NOT_FOUND, (command, proc.stderr)
        assert "no session '20200101-000000-abcdef'" in proc.stderr
        assert store_url in proc.stderr
        assert "starburst sessions" in proc.stderr


def test_every_subcommand_help_has_an_example() -> None:
    procs = {
        name: subprocess.Popen(
            [*STARBURST, name, "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for name in [*SUBCOMMANDS, "--help"]
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (name, err)
        assert "example" in out, (name, out)


# -- a worker started by hand ------------------------------------------------------------------


@pytest.mark.slow
def test_worker_started_by_hand_joins_the_session(
    store_url: str, made: list[DetachedExecutor], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    # One worker, busy on a blocked task; every batch holds one task (task_timeout).
    ex = DetachedExecutor(max_workers=1, store=store_url, pacing=FAST, task_timeout=60)
    made.append(ex)
    blocked = ex.submit(tasks.wait_for_gate, str(gate), "gated")
    wait_until(lambda: ex.status().running == 1, what="the blocked task to start")
    more = [ex.submit(tasks.add, i, i) for i in range(3)]
    wait_until(lambda: ex.status().pending == 3, what="3 pending tasks")

    env = subprocess_env(**{SECRET_ENV: secret_key().hex()})
    worker = subprocess.Popen(
        [
            *STARBURST,
            "worker",
            "--store",
            store_url,
            "--session",
            ex.session_id,
            "--worker-id",
            "by-hand",
            "--poll-max",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert [f.result(timeout=30) for f in more] == [0, 2, 4]
        assert not blocked.done()
        reader = SessionReader(open_store(store_url), ex.session_id, Codec(secret_key()))
        done = reader.done()
        records = [reader.read_result(event) for event in done.values()]
        assert sorted(r.worker for r in records) == ["by-hand"] * 3
        assert "by-hand" in {w.worker for w in reader.workers() if w.state == "running"}
    finally:
        gate.touch()
    assert blocked.result(timeout=30) == "gated"
    ex.cleanup()
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    record = next(w for w in reader.workers() if w.worker == "by-hand")
    assert (record.state, record.tasks) == ("exited", 3)


# -- rough edges -------------------------------------------------------------------------------


def test_version() -> None:
    from starburst_executor import __version__

    proc = starburst("--version")
    assert (proc.returncode, proc.stdout.strip()) == (EXIT_OK, f"starburst {__version__}")


def _bare_sessions(store_url: str, names: list[str]) -> list[str]:
    """Sessions created in the store without workers or tasks (fast), named ``names``."""
    from starburst_executor._session import Session, new_session_id
    from starburst_executor.protocol import SessionManifest, runtime_versions

    store, codec = open_store(store_url), Codec(secret_key())
    sids = []
    for name in names:
        sid = new_session_id()
        Session(
            store,
            SessionManifest(sid, store.now(), runtime_versions(), name=name, store_url=store.url),
            codec,
        ).create()
        sids.append(sid)
    return sids


def test_output_piped_into_head_ends_without_a_broken_pipe_error(store_url: str) -> None:
    _bare_sessions(store_url, [f"session-{i}-" + "x" * 200 for i in range(250)])  # > 64 KiB
    writer = subprocess.Popen(
        [*STARBURST, "sessions", "--store", store_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    assert writer.stdout is not None and writer.stderr is not None
    head = subprocess.run(
        ["head", "-1"], stdin=writer.stdout, capture_output=True, timeout=120, check=True
    )
    writer.stdout.close()
    err = writer.stderr.read().decode()
    writer.wait(timeout=120)
    assert head.stdout.decode().split()[:3] == ["SESSION", "NAME", "STATE"]
    assert err == "", err  # no "Broken pipe", no "Exception ignored"


def test_tables_survive_names_with_newlines_and_wide_characters(store_url: str) -> None:
    import unicodedata

    names = ["two\nlines", "数据分析😀", "plain", "tab\there\x1b[31m"]
    sids = _bare_sessions(store_url, names)
    proc = starburst("sessions", "--store", store_url)
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 + len(names)  # one row per session: the newline did not split one
    assert "two\\nlines" in proc.stdout and "\x1b" not in proc.stdout and "\t" not in proc.stdout

    def columns(text: str) -> int:
        return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)

    state_at = {
        columns(line[: line.index(word)])
        for line, word in zip(lines, ["STATE", *["open"] * len(names)])
    }
    assert len(state_at) == 1, proc.stdout  # the STATE column lines up in every row

    proc = starburst("status", sids[0], "--store", store_url)
    assert proc.returncode == EXIT_OK, proc.stderr
    table = dict(line.split(":", 1) for line in proc.stdout.splitlines())
    assert table["Session"].strip() == f"{sids[0]} (two\\nlines)"


@pytest.mark.parametrize("env", [{"PYTHONIOENCODING": "ascii"}, {"LANG": "C", "LC_ALL": "C"}])
def test_non_ascii_output_survives_an_ascii_terminal(store_url: str, env: dict[str, str]) -> None:
    [sid] = _bare_sessions(store_url, ["数据😀"])
    for args in (["sessions", "--store", store_url], ["status", sid, "--store", store_url]):
        proc = subprocess.run(
            [*STARBURST, *args],
            capture_output=True,
            timeout=60,
            check=False,
            env={**subprocess_env(PYTHONUTF8="0"), **env},
        )
        assert proc.returncode == EXIT_OK, proc.stderr
        assert b"\\u6570\\u636e\\U0001f600" in proc.stdout, proc.stdout


def test_worker_help_lists_its_options() -> None:
    proc = starburst("worker", "--help")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.startswith("usage: starburst worker")
    for option in ("--store", "--session", "--worker-id", "--poll-max", "--log-level"):
        assert option in proc.stdout


@pytest.mark.slow
def test_worker_given_only_the_session_finds_its_store_in_the_index(
    store_url: str, made: list[DetachedExecutor], tmp_path: Path
) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_url, pacing=FAST, idle_timeout=1)
    made.append(ex)
    ex.submit(tasks.add, 20, 22)
    ex.detach()  # its own worker may run the task; the one started by hand must join anyway
    proc = subprocess.run(
        [
            *STARBURST,
            "worker",
            "--session",
            ex.session_id,
            "--worker-id",
            "by-hand",
            "--poll-max",
            "0.1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"(store {store_url}, " in proc.stderr  # the worker's start line names it
    reader = SessionReader(open_store(store_url), ex.session_id, Codec(secret_key()))
    assert "by-hand" in {w.worker for w in reader.workers()}


def test_cancel_of_a_cleaned_up_session_says_so_and_changes_nothing(
    store_url: str, made: list[DetachedExecutor]
) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_url, pacing=FAST)
    made.append(ex)
    assert ex.submit(tasks.add, 1, 1).result(timeout=60) == 2
    ex.cleanup()
    proc = starburst("cancel", ex.session_id)
    assert proc.returncode == EXIT_NOT_FOUND
    assert "cleaned up" in proc.stderr and "nothing was changed" in proc.stderr
    assert json.loads(starburst("status", ex.session_id, "--json").stdout)["state"] == "closed"

    ex.cleanup(delete_data=True)
    proc = starburst("cancel", ex.session_id)
    assert proc.returncode == EXIT_NOT_FOUND and "deleted" in proc.stderr


def test_collect_checks_the_output_path_before_waiting(
    store_url: str, made: list[DetachedExecutor], tmp_path: Path
) -> None:
    ex = DetachedExecutor(max_workers=1, store=store_url, pacing=FAST)
    made.append(ex)
    ex.submit(tasks.wait_for_gate, str(tmp_path / "gate"), 1)  # never finishes by itself
    ex.detach()
    for target in (tmp_path / "no-such-dir" / "out.pkl", tmp_path):
        proc = starburst("collect", ex.session_id, "-o", str(target), "--wait", timeout=30)
        assert proc.returncode == 1, proc.stderr
        assert f"cannot write the results to {str(target)!r}" in proc.stderr
    (tmp_path / "gate").touch()


def test_a_malformed_session_id_is_a_usage_error_naming_the_format() -> None:
    proc = starburst("status", "../x")
    assert proc.returncode == 2
    assert "expected YYYYMMDD-HHMMSS-xxxxxx" in proc.stderr
