"""``starburst dashboard`` and ``starburst status --watch``: a session's progress, live.

- :mod:`.stats`: the figures (duration histogram, throughput series), pure functions;
- :mod:`.data`: what is shown of one session, read from the store alone (``SessionWatch``);
- :mod:`.server`: the local web server (127.0.0.1 only) with its JSON API and static page;
- :mod:`.watch`: the same numbers redrawn in a terminal.
"""

from __future__ import annotations

import json
import sys
import threading
import webbrowser
from typing import TextIO

from starburst_executor.dashboard.server import DashboardServer
from starburst_executor.stores.base import Store

__all__ = ["DashboardServer", "serve"]


def serve(
    store: Store,
    *,
    port: int = 0,
    session_id: str | None = None,
    open_browser: bool = True,
    as_json: bool = False,
    out: TextIO | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the dashboard of ``store`` until Ctrl-C (or ``stop`` is set).

    Args:
        store: the store whose sessions are shown.
        port: the port on 127.0.0.1; 0 lets the system pick a free one.
        session_id: open the page on this session.
        open_browser: open the page in the default browser (``webbrowser.open``).
        as_json: print the address as a JSON object instead of a sentence.
        out: where to print the address (default: stdout).
        stop: an event that ends the serving when set (for callers that embed it).

    Raises:
        OSError: the port is taken.
    """
    out = sys.stdout if out is None else out
    with DashboardServer(store, port) as server:
        url = server.url + (f"#{session_id}" if session_id else "")
        if as_json:
            print(json.dumps({"url": url, "port": server.port}), file=out, flush=True)
        else:
            print(f"starburst dashboard: {url}  (Ctrl-C to stop)", file=out, flush=True)
        if open_browser:
            webbrowser.open(url)
        (stop or threading.Event()).wait()
