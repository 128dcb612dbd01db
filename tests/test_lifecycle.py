"""An executor's life and death in a real interpreter: garbage collection and interpreter exit.

Each test runs a short script in a fresh ``python`` (the ``executor_store`` fixture's
environment reaches it, and its workers, through ``os.environ``) with a timeout: a hang fails
the test instead of blocking the suite. Functions defined in the scripts live in ``__main__``,
so cloudpickle sends them by value.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT_TIMEOUT = 60


def run_script(source: str, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, (
        f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc, elapsed


def workers_of(session_id: str) -> list[int]:
    """Pids of live processes whose command line names the session (its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if session_id.encode() in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def session_line(stdout: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("session ")]
    return line.split()[1]


@pytest.mark.parametrize("drop", ["del", "exit"])
def test_unused_executor_does_not_delay_exit(executor_store: str, drop: str) -> None:
    _, elapsed = run_script(
        """
        import sys
        from starburst_executor import StarburstExecutor

        ex = StarburstExecutor(max_workers=2, store=sys.argv[1])
        if sys.argv[2] == "del":
            del ex
        print("bye")
        """,
        executor_store,
        drop,
    )
    assert elapsed < 15


@pytest.mark.slow
def test_interpreter_exit_finishes_pending_work(executor_store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    proc, _ = run_script(
        """
        import sys, time
        from pathlib import Path
        from starburst_executor import StarburstExecutor

        def work(out, i):
            time.sleep(0.3)
            Path(out, f"done-{i}").write_text(str(i * i))
            return i

        ex = StarburstExecutor(max_workers=2, store=sys.argv[1])
        futures = [ex.submit(work, sys.argv[2], i) for i in range(6)]
        print("session", ex.session_id, flush=True)
        # No shutdown(), no result(): the interpreter exits with the work pending.
        """,
        executor_store,
        str(out),
    )
    assert sorted(p.name for p in out.iterdir()) == [f"done-{i}" for i in range(6)]
    assert [(out / f"done-{i}").read_text() for i in range(6)] == [str(i * i) for i in range(6)]
    assert workers_of(session_line(proc.stdout)) == []


def test_dropped_executor_stops_its_manager_thread_and_workers(executor_store: str) -> None:
    proc, _ = run_script(
        """
        import gc, os, sys, weakref
        from starburst_executor import StarburstExecutor

        ex = StarburstExecutor(max_workers=2, store=sys.argv[1])
        assert ex.submit(abs, -3).result(timeout=60) == 3
        thread = ex._manager.thread
        print("session", ex.session_id, flush=True)
        ref = weakref.ref(ex)
        del ex
        gc.collect()
        assert ref() is None, gc.get_referrers(ref())
        thread.join(timeout=30)
        print("manager alive:", thread.is_alive(), flush=True)
        """,
        executor_store,
    )
    assert "manager alive: False" in proc.stdout
    assert workers_of(session_line(proc.stdout)) == []


def test_unused_executor_is_garbage_collected(executor_store: str) -> None:
    proc, _ = run_script(
        """
        import gc, sys, threading, weakref
        from starburst_executor import StarburstExecutor

        before = threading.active_count()
        ex = StarburstExecutor(max_workers=2, store=sys.argv[1])
        ref = weakref.ref(ex)
        del ex
        gc.collect()
        print("collected:", ref() is None, "threads:", threading.active_count() - before)
        """,
        executor_store,
    )
    assert "collected: True threads: 0" in proc.stdout


@pytest.mark.slow
def test_futures_of_a_dropped_executor_still_complete(executor_store: str) -> None:
    proc, _ = run_script(
        """
        import gc, sys, time
        from starburst_executor import StarburstExecutor

        def slow(i):
            time.sleep(0.3)
            return i * 10

        ex = StarburstExecutor(max_workers=2, store=sys.argv[1])
        futures = [ex.submit(slow, i) for i in range(4)]
        del ex
        gc.collect()
        print("results:", [f.result(timeout=60) for f in futures])
        """,
        executor_store,
    )
    assert "results: [0, 10, 20, 30]" in proc.stdout


def test_workers_run_in_their_own_process_session(executor_store: str) -> None:
    """A Ctrl-C (SIGINT to the terminal's process group) that stops the client does not reach
    the workers mid-task: they run in their own process session."""
    proc, _ = run_script(
        """
        import os, sys
        from starburst_executor import StarburstExecutor

        def where():
            return os.getsid(0), os.getpgid(0)

        with StarburstExecutor(max_workers=1, store=sys.argv[1]) as ex:
            sid, pgid = ex.submit(where).result(timeout=60)
        assert sid != os.getsid(0) and pgid != os.getpgid(0), (sid, pgid)
        print("separate session")
        """,
        executor_store,
    )
    assert "separate session" in proc.stdout
