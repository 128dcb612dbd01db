"""The dashboard's web server: one static page and a small JSON API, on 127.0.0.1 only.

Routes (``GET`` only):

- ``/``: the page (``static/index.html``), which polls the API below every second or two;
- ``/api/sessions``: every session of the store, as ``starburst sessions --json`` lists them;
- ``/api/sessions/{sid}``: one session's view (:meth:`SessionWatch.snapshot`).

The standard library's ``ThreadingHTTPServer`` serves it: a page for one person on one machine
needs no web framework. What the page shows includes tracebacks and task output, which may
hold anything, so: the socket is bound to the loopback address only; a request whose ``Host``
is not that address (or ``localhost``) with the server's port is refused, so that a web site
cannot read the API through a DNS name rebound to 127.0.0.1; and the page's Content Security
Policy allows only its own inline script (by hash) and requests to this server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

from starburst_executor.config import validate_session_id
from starburst_executor.dashboard.data import SessionWatch
from starburst_executor.errors import SessionError, StarburstError
from starburst_executor.sessions import SessionReader, codec_for, list_sessions
from starburst_executor.stores.base import Store

logger = logging.getLogger(__name__)

__all__ = ["DashboardServer", "page"]

HOST = "127.0.0.1"


def page() -> bytes:
    """The dashboard's HTML page, as shipped in the package."""
    return (
        resources.files("starburst_executor.dashboard").joinpath("static/index.html").read_bytes()
    )


def _script_hashes(html: bytes) -> list[str]:
    """CSP hashes of the page's inline scripts (the policy allows those and nothing else)."""
    scripts = re.findall(rb"<script>(.*?)</script>", html, flags=re.DOTALL)
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(s).digest()).decode() + "'" for s in scripts
    ]


class DashboardServer:
    """Serves the dashboard of one store in a background thread.

    Args:
        store: the store whose sessions it shows.
        port: the port to listen on; 0 (the default) lets the system pick a free one.

    Raises:
        OSError: the port is taken (or not allowed).
    """

    def __init__(self, store: Store, port: int = 0) -> None:
        self.store = store
        self._codec = codec_for(store)
        self._watches: dict[str, SessionWatch] = {}
        self._watches_lock = threading.Lock()
        self._page = page()
        self._csp = (
            "default-src 'none'; script-src "
            + " ".join(_script_hashes(self._page))
            + "; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
        self._httpd = ThreadingHTTPServer((HOST, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def start(self) -> DashboardServer:
        """Serve in a daemon thread; returns ``self``."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="starburst-dashboard", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until :meth:`close` is called from another (or Ctrl-C)."""
        self._httpd.serve_forever()

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the routes answer -------------------------------------------------------------

    def allowed_host(self, host: str | None) -> bool:
        return host in (f"{HOST}:{self.port}", f"localhost:{self.port}")

    def sessions(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in list_sessions(self.store)]

    def session(self, session_id: str) -> dict[str, Any]:
        """One session's view.

        Raises:
            ValueError: not a session id.
            SessionError: no such session in the store, or its data was deleted.
        """
        session_id = validate_session_id(session_id)
        with self._watches_lock:
            watch = self._watches.get(session_id)
        if watch is None:
            watch = SessionWatch(SessionReader(self.store, session_id, self._codec))
            with self._watches_lock:
                watch = self._watches.setdefault(session_id, watch)
        return watch.snapshot()


def _handler_for(app: DashboardServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "starburst-dashboard"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if not app.allowed_host(self.headers.get("Host")):
                self._json({"error": "unknown Host header"}, HTTPStatus.FORBIDDEN)
                return
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._send(app._page, "text/html; charset=utf-8", HTTPStatus.OK)
            elif path == "/api/sessions":
                self._answer(app.sessions)
            elif path.startswith("/api/sessions/"):
                sid = unquote(path[len("/api/sessions/") :])
                self._answer(lambda: app.session(sid))
            else:
                self._json({"error": f"no such page: {path}"}, HTTPStatus.NOT_FOUND)

        def _answer(self, make: Any) -> None:
            try:
                data = make()
            except (SessionError, ValueError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
            except StarburstError as exc:  # store unreachable, damaged record: say so, go on
                logger.warning("dashboard: %s", exc)
                self._json({"error": str(exc)}, HTTPStatus.BAD_GATEWAY)
            else:
                self._json(data, HTTPStatus.OK)

        def _json(self, data: Any, status: HTTPStatus) -> None:
            body = json.dumps(data, default=str).encode()
            self._send(body, "application/json", status)

        def _send(self, body: bytes, kind: str, status: HTTPStatus) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", app._csp)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.debug("dashboard: " + format, *args)

    return Handler
