"""``LocalLauncher``: workers as processes on this machine.

Each worker runs the same entry point as the container (``python -m
starburst_executor.worker``), in its own process session so that a detached session outlives
the client and a Ctrl-C in the client's terminal does not reach it. Its output goes to a log
file per worker under ``STARBURST_HOME/logs/{session}/``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from starburst_executor._private import make_private_dir, open_private
from starburst_executor.config import SECRET_ENV, home_dir, secret_key
from starburst_executor.launchers.base import WorkerExit
from starburst_executor.protocol import WorkerRecord, WorkerState

__all__ = ["LocalLauncher", "process_started"]

logger = logging.getLogger(__name__)


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (POSIX time), or ``None`` if it does not exist or this
    system has no ``/proc`` (then only its existence can be checked).

    With the pid and this time, a process can be told from a later one that reused its pid.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # Field 22 (starttime, clock ticks after boot) counts from after the ")" that ends the
    # command name, which may itself hold spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_worker(pid: int, session_id: str) -> bool:
    """Whether ``pid`` is a starburst worker of this session (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)  # no /proc (macOS): trust the worker record
    return b"starburst_executor.worker" in cmdline and session_id.encode() in cmdline


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            return b"\n".join(fh.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def _worker_pythonpath(current: str) -> str:
    """The client's own additions to ``sys.path`` (a script's folder, ``sys.path.insert``),
    so local workers import what the client imports, as spawn-mode ProcessPoolExecutor
    children do. The interpreter's own paths are left to the worker's interpreter."""
    own = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    extra = [
        os.path.abspath(p or os.curdir)
        for p in sys.path
        if os.path.isdir(p or os.curdir)
        and "site-packages" not in p
        and not any(os.path.abspath(p or os.curdir).startswith(root) for root in own)
    ]
    parts = [p for p in current.split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(extra + parts))


class LocalLauncher:
    """Runs workers as local processes.

    Args:
        store_url: the store the workers use.
        session_id: the session they work for.
        poll_max: the workers' longest wait between looks for work.
        log_dir: where worker logs go (default ``STARBURST_HOME/logs/{session_id}``).
    """

    def __init__(
        self, store_url: str, session_id: str, *, poll_max: float = 0.5, log_dir: Path | None = None
    ) -> None:
        self.store_url = store_url
        self.session_id = session_id
        self.poll_max = poll_max
        self.log_dir = log_dir or home_dir() / "logs" / session_id
        self._procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        # Live workers of this session that another process started (an earlier client of a
        # detached session), counted by running() while they live so that a reattached
        # client tops the pool up to max_workers instead of doubling it.
        self._adopted: set[int] = set()

    def start(self, count: int) -> list[str]:
        make_private_dir(self.log_dir)  # task output may be anyone's data: 700, files 600
        env = dict(os.environ)
        env[SECRET_ENV] = secret_key().hex()  # never via the store; see DESIGN.md "Security"
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = _worker_pythonpath(env.get("PYTHONPATH", ""))
        started = []
        for _ in range(count):
            worker = f"local-{os.getpid()}-{secrets.token_hex(3)}"
            log = self.log_dir / f"{worker}.log"
            with open(log, "ab", opener=open_private) as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "starburst_executor.worker",
                        "--store",
                        self.store_url,
                        "--session",
                        self.session_id,
                        "--worker-id",
                        worker,
                        "--poll-max",
                        str(self.poll_max),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            self._procs[worker] = (proc, log)
            started.append(worker)
        logger.debug("session %s: started %d local worker(s)", self.session_id, count)
        return started

    def running(self) -> int:
        """Workers alive: those this launcher started, and those it adopted."""
        self._adopted = {pid for pid in self._adopted if _is_worker(pid, self.session_id)}
        own = sum(1 for proc, _ in self._procs.values() if proc.poll() is None)
        return own + len(self._adopted)

    def adopt_recorded(self, workers: Iterable[WorkerRecord]) -> int:
        """Count this session's workers that run on this host, started by another process,
        as running (their records say so and the process is still a worker of this
        session); returns how many. Their exits are not reported by :meth:`poll`: they are
        not this process's children, and their claims are handled through the store."""
        host = socket.gethostname()
        own = {proc.pid for proc, _ in self._procs.values()}
        for w in workers:
            if (
                w.host == host
                and w.state is WorkerState.RUNNING
                and w.pid not in own
                and _is_worker(w.pid, self.session_id)
            ):
                self._adopted.add(w.pid)
        return len(self._adopted)

    def pids(self) -> dict[str, int]:
        """Process ids of the workers still running, by worker id."""
        return {w: p.pid for w, (p, _) in self._procs.items() if p.poll() is None}

    def poll(self) -> list[WorkerExit]:
        ended = []
        for worker, (proc, log) in list(self._procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self._procs[worker]
            reason = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            ended.append(WorkerExit(worker, code, reason, _tail(log) if code else ""))
        return ended

    def remove_logs(self) -> None:
        """Delete this session's worker logs (once its workers have exited)."""
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def stop(self, timeout: float = 10.0) -> None:
        for proc, _ in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc, _ in self._procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning(
                    "session %s: worker pid %d ignored SIGTERM; killing it",
                    self.session_id,
                    proc.pid,
                )
                proc.kill()
                proc.wait()

    def stop_recorded(
        self, workers: Callable[[], Iterable[WorkerRecord]], timeout: float = 15.0
    ) -> int:
        """SIGTERM the workers of this session that run on this host but were started by
        another process (an earlier client of a detached session), as their records say;
        returns how many were signalled. They exit by themselves once the session is closed:
        this only hurries them, and waits up to ``timeout`` for the processes to be gone.

        Args:
            workers: reads the session's worker records (again while waiting).
            timeout: seconds to wait for them to exit.
        """
        host = socket.gethostname()
        sid = self.session_id

        def local_pids(running_only: bool) -> list[int]:
            return [
                w.pid
                for w in workers()
                if w.host == host
                and (w.state is WorkerState.RUNNING or not running_only)
                and _is_worker(w.pid, sid)
            ]

        signalled: list[int] = []
        for pid in local_pids(running_only=True):
            try:
                os.kill(pid, signal.SIGTERM)
                signalled.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A worker writes its "exited" record before it ends (then uploads its log):
            # wait for the processes themselves, also of workers that were already leaving
            # by themselves, so that none is left when this returns.
            if not any(_is_worker(pid, sid) for pid in signalled) and not local_pids(False):
                break
            time.sleep(0.05)  # a poll with a deadline: no event tells a foreign pid's exit
        return len(signalled)
