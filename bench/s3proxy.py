"""A counting HTTP reverse proxy for an S3 endpoint, with an optional added delay.

Put it between the executor (client and workers) and SeaweedFS to count every S3 request by
operation, and to model a client far from its region (``delay`` seconds added to every
request, before it is forwarded). It forwards request bodies, all end-to-end headers
(``Host``, ``Authorization``, ``x-amz-*``, ``If-None-Match``/``If-Match``, ``Content-MD5``,
``Content-Encoding: aws-chunked`` with ``x-amz-decoded-content-length``) and ``Content-Length``
unchanged, and returns the upstream status, headers (``ETag``, ``Date``, ...) and body.

Operations are classified as S3 sees them:

- ``LIST``: ``GET`` with ``list-type=2`` (ListObjectsV2) or on a bucket without a key;
- ``GET`` / ``HEAD`` / ``PUT``: object reads, metadata reads and writes; conditional writes
  are also tallied as ``PUT?if-none-match`` / ``PUT?if-match``;
- ``DELETE``: ``DELETE`` and ``POST ?delete`` (DeleteObjects, up to 1,000 keys);
- ``OTHER``: anything else.

Faults can be injected (``slowdown``/``reset`` fractions, settable later): a request is
answered ``503 SlowDown`` as S3 does when throttling, or its connection is reset (RST), half
the time before the request reaches the server and half the time after (the server acted,
the answer is lost: the case that makes an SDK's retry of a conditional write meet its own
first attempt). Injected faults are tallied as ``injected:503`` / ``injected:reset-before`` /
``injected:reset-after`` in the detail counts.

Requests are attributed to a *role* from the User-Agent: botocore appends ``app/<id>`` when
``AWS_SDK_UA_APP_ID`` is set, so the benchmark gives the client and the workers different ids.

:class:`ProxyProcess` runs the proxy in a child process (``python bench/s3proxy.py``) and
drives it through ``/__proxy__/...`` control requests, so that relaying bodies does not compete
with the measured client for its GIL; :class:`CountingProxy` is the in-process server itself.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["CountingProxy", "ProxyProcess", "classify"]

# Hop-by-hop headers (RFC 9110 7.6.1) are per connection and never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }  # the proxy answers 100-continue itself and forwards the whole body at once
)
_CONTROL = "/__proxy__/"
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
_APP_ID = re.compile(r"\bapp/([A-Za-z0-9._-]+)")


def classify(method: str, target: str, headers: Any = None) -> str:
    """The S3 operation of a request: GET, LIST, PUT, HEAD, DELETE or OTHER."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.strip("/")
    method = method.upper()
    if method == "GET":
        if "list-type" in query or "/" not in path:  # ListObjects(V2), or a bucket-level GET
            return "LIST"
        return "GET"
    if method == "PUT":
        return "PUT"
    if method == "HEAD":
        return "HEAD"
    if method == "DELETE" or (method == "POST" and "delete" in query):
        return "DELETE"
    return "OTHER"


class _Stats:
    """Thread-safe tallies: (role, op) -> count, plus conditional-write and status detail."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: Counter[tuple[str, str]] = Counter()
        self.detail: Counter[str] = Counter()
        self.bytes_up = 0
        self.bytes_down = 0

        self.trace: list[dict[str, Any]] | None = None  # per-request records, when tracing

    def add(
        self,
        role: str,
        op: str,
        detail: list[str],
        up: int,
        down: int,
        record: dict[str, Any] | None = None,
    ) -> None:
        with self.lock:
            if self.trace is not None and record is not None:
                self.trace.append(record)
            self.ops[(role, op)] += 1
            self.detail.update(detail)
            self.bytes_up += up
            self.bytes_down += down

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ops": dict(self.ops),
                "detail": dict(self.detail),
                "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down,
            }

    def reset(self) -> None:
        with self.lock:
            self.ops.clear()
            self.detail.clear()
            self.bytes_up = self.bytes_down = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    # Buffer the response so that headers and body leave in one write (flushed after each
    # request), and disable Nagle: a headers-then-body pair of small writes otherwise meets
    # the client's delayed ACK and stalls ~40 ms, which the proxy must not add.
    wbufsize = 1 << 16
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    _conn: http.client.HTTPConnection | None = None  # kept alive across this client's requests

    def _upstream(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is None:
            conn = http.client.HTTPConnection(
                self.server.upstream_host, self.server.upstream_port, timeout=120
            )
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return conn

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:  # HTTP chunked framing: de-chunk, forward with a Content-Length
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers: dropped (the proxy only sees HTTP framing)
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _control(self) -> None:
        """``/__proxy__/{snapshot,reset,delay?seconds=S,faults?slowdown=F&reset=F,trace-start,
        trace-take}``: the API the
        benchmark uses to drive a proxy in another process. Never forwarded (S3 bucket names
        cannot contain ``_``) and never counted."""
        self._read_body()
        parts = urlsplit(self.path)
        action = parts.path[len(_CONTROL) :]
        stats = self.server.stats
        result: Any = None
        if action == "snapshot":
            snap = stats.snapshot()
            snap["ops"] = {f"{role}|{op}": n for (role, op), n in snap["ops"].items()}
            result = snap
        elif action == "reset":
            stats.reset()
        elif action == "delay":
            self.server.delay = float(parse_qs(parts.query)["seconds"][0])
        elif action == "faults":
            query = parse_qs(parts.query)
            self.server.slowdown = float(query.get("slowdown", ["0"])[0])
            self.server.reset = float(query.get("reset", ["0"])[0])
        elif action == "trace-start":
            with stats.lock:
                stats.trace = []
        elif action == "trace-take":
            with stats.lock:
                trace, stats.trace = stats.trace or [], None
            result = sorted(trace, key=lambda r: r["start"])
        else:
            self.send_error(404, f"no control action {action!r}")
            return
        body = json.dumps(result).encode()
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reset_connection(self) -> None:
        """Abort the client's connection with a TCP RST (linger 0), as a dropped network path
        or a load balancer does; the client sees ``ConnectionResetError``."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def _slow_down(self) -> None:
        self.send_response_only(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_SLOWDOWN_BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(_SLOWDOWN_BODY)

    def _forward(self) -> None:
        if self.path.startswith(_CONTROL):
            self._control()
            return
        roll = random.random()  # fault injection: [reset | slowdown | forward]
        reset_before = roll < self.server.reset / 2
        reset_after = self.server.reset / 2 <= roll < self.server.reset
        slowdown = self.server.reset <= roll < self.server.reset + self.server.slowdown
        t_start = time.time()
        body = self._read_body()
        op = classify(self.command, self.path)
        detail = []
        if op == "PUT":
            if self.headers.get("If-None-Match"):
                detail.append("PUT?if-none-match")
            if self.headers.get("If-Match"):
                detail.append("PUT?if-match")
        ua = self.headers.get("User-Agent", "")
        match = _APP_ID.search(ua)
        role = match.group(1) if match else "other"
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        if (
            body
            or "Content-Length" in self.headers
            or "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        ):
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        if self.server.delay:
            time.sleep(self.server.delay)
        if reset_before or slowdown:
            tag = "injected:reset-before" if reset_before else "injected:503"
            self.server.stats.add(role, op, [*detail, tag], len(body), 0)
            if reset_before:
                self._reset_connection()
            else:
                self._slow_down()
            return
        resp = None
        for attempt in (1, 2):  # a kept-alive upstream connection may have been closed
            try:
                conn = self._upstream()
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError, OSError):
                conn.close()
                self._conn = None
                if attempt == 2:
                    self.send_error(502, "upstream failed")
                    self.server.stats.add(role, op, [*detail, "status:502"], len(body), 0)
                    return
        assert resp is not None
        detail.append(f"status:{resp.status}")
        if reset_after:  # the server acted on the request; its answer is lost
            self.server.stats.add(role, op, [*detail, "injected:reset-after"], len(body), 0)
            self._reset_connection()
            return
        self.send_response_only(resp.status, resp.reason)
        have_length = False
        for k, v in resp.getheaders():
            low = k.lower()
            if low in _HOP_BY_HOP:
                continue
            if low == "content-length":
                have_length = True
            self.send_header(k, v)
        if not have_length and self.command != "HEAD" and resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        if resp.getheader("Connection", "").lower() == "close":
            conn.close()
            self._conn = None
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)
        record = None
        if self.server.stats.trace is not None:
            record = {
                "start": t_start,
                "end": time.time(),
                "role": role,
                "op": op,
                "target": self.path,
                "status": resp.status,
                "up": len(body),
                "down": len(data),
                "cond": "if-none-match"
                if self.headers.get("If-None-Match")
                else "if-match"
                if self.headers.get("If-Match")
                else "",
            }
        self.server.stats.add(role, op, detail, len(body), len(data), record)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its kept-alive connection (a worker exiting) is not an error.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    upstream_host: str
    upstream_port: int
    delay: float
    slowdown: float  # fraction of requests answered 503 SlowDown
    reset: float  # fraction of requests whose connection is reset
    stats: _Stats


class CountingProxy:
    """A reverse proxy on ``127.0.0.1`` in front of ``upstream`` (``http://host:port``).

    Args:
        upstream: the S3 endpoint to forward to.
        delay: seconds added to every request (models network latency); settable later.
        slowdown: fraction of requests answered ``503 SlowDown``; see :meth:`set_faults`.
        reset: fraction of requests whose connection is reset.

    Use as a context manager; ``endpoint_url`` is the proxy's address, ``snapshot()`` the
    tallies so far and ``reset()`` clears them.
    """

    def __init__(
        self, upstream: str, *, delay: float = 0.0, slowdown: float = 0.0, reset: float = 0.0
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream_host = parts.hostname
        self._server.upstream_port = parts.port
        self._server.delay = delay
        self._server.slowdown = slowdown
        self._server.reset = reset
        self._server.stats = _Stats()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="s3-proxy",
            kwargs={"poll_interval": 0.1},
            daemon=True,
        )
        port = self._server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{port}"

    @property
    def delay(self) -> float:
        return self._server.delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._server.delay = value

    def set_faults(self, slowdown: float = 0.0, reset: float = 0.0) -> None:
        """From now on, answer ``slowdown`` of requests 503 SlowDown and reset ``reset`` of
        connections (fractions; 0 turns injection off)."""
        self._server.slowdown = slowdown
        self._server.reset = reset

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def snapshot(self) -> dict[str, Any]:
        return self._server.stats.snapshot()

    def reset(self) -> None:
        self._server.stats.reset()

    def start_trace(self) -> None:
        """Record every request from now on (see :meth:`take_trace`)."""
        with self._server.stats.lock:
            self._server.stats.trace = []

    def take_trace(self) -> list[dict[str, Any]]:
        """The requests recorded since :meth:`start_trace` (and stop recording): dicts with
        ``start``/``end`` (POSIX time), ``role``, ``op``, ``target``, ``status``, ``cond``."""
        with self._server.stats.lock:
            trace, self._server.stats.trace = self._server.stats.trace or [], None
        return sorted(trace, key=lambda r: r["start"])

    def __enter__(self) -> CountingProxy:  # noqa: PYI034 - Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyProcess:
    """The same proxy in a child process, with :class:`CountingProxy`'s interface.

    The benchmark uses this one: a proxy inside the client's process would compete with the
    client for the GIL (noticeably so while it relays 20 MB bodies) and slow the client down.

    Args:
        upstream: the S3 endpoint to forward to.
        delay: seconds added to every request; settable later.
    """

    def __init__(self, upstream: str, *, delay: float = 0.0) -> None:
        self._upstream = upstream
        self._initial_delay = delay
        self._delay = delay
        self._proc: subprocess.Popen[str] | None = None
        self.endpoint_url = ""

    def start(self) -> ProxyProcess:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--upstream",
                self._upstream,
                "--delay-ms",
                str(self._initial_delay * 1000),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the S3 proxy did not start (said {line!r})")
        self.endpoint_url = line
        return self

    def _call(self, action: str) -> Any:
        parts = urlsplit(self.endpoint_url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            conn.request("POST", _CONTROL + action, body=b"")
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"proxy control {action!r} failed: {resp.status} {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    @property
    def delay(self) -> float:
        return self._delay

    @delay.setter
    def delay(self, value: float) -> None:
        self._call(f"delay?seconds={value}")
        self._delay = value

    def snapshot(self) -> dict[str, Any]:
        snap = self._call("snapshot")
        snap["ops"] = {tuple(k.split("|", 1)): n for k, n in snap["ops"].items()}
        return snap  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._call("reset")

    def set_faults(self, slowdown: float = 0.0, reset: float = 0.0) -> None:
        """As :meth:`CountingProxy.set_faults`."""
        self._call(f"faults?slowdown={slowdown}&reset={reset}")

    def start_trace(self) -> None:
        self._call("trace-start")

    def take_trace(self) -> list[dict[str, Any]]:
        return self._call("trace-take")  # type: ignore[no-any-return]

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the child exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ProxyProcess:  # noqa: PYI034 - Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a proxy until stdin closes (or SIGTERM); print its URL as the first stdout line."""
    parser = argparse.ArgumentParser(description="Counting S3 reverse proxy on 127.0.0.1.")
    parser.add_argument("--upstream", required=True, help="http://host:port of the S3 server")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every request")
    args = parser.parse_args(argv)
    proxy = CountingProxy(args.upstream, delay=args.delay_ms / 1000).start()
    print(proxy.endpoint_url, flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
    except (OSError, ValueError):
        pass
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
