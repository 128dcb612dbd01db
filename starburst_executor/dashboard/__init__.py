"""``starburst dashboard`` and ``starburst status --watch``: a session's progress, live.

- :mod:`.stats`: the figures (duration histogram, throughput series), pure functions;
- :mod:`.data`: what is shown of one session, read from the store alone (``SessionWatch``);
- :mod:`.server`: the local web server (127.0.0.1 only) with its JSON API and static page;
- :mod:`.watch`: the same numbers redrawn in a terminal.
"""

from __future__ import annotations

import threading
import webbrowser
from collections.abc import Callable

from starburst_executor.dashboard.server import DashboardServer
from starburst_executor.stores.base import Store

__all__ = ["DashboardServer", "serve"]


def serve(
    store: Store,
    *,
    port: int = 0,
    session_id: str | None = None,
    open_browser: bool = True,
    on_ready: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the dashboard of ``store`` until Ctrl-C (or ``stop`` is set).

    Args:
        store: the store whose sessions are shown.
        port: the port on 127.0.0.1; 0 lets the system pick a free one.
        session_id: open the page on this session.
        open_browser: open the page in the default browser (``webbrowser.open``).
        on_ready: called with the page's address and port once it serves (the command
            prints them; the library itself writes nothing to the console).
        stop: an event that ends the serving when set (for callers that embed it).

    Raises:
        OSError: the port is taken.
    """
    with DashboardServer(store, port) as server:
        url = server.url + (f"#{session_id}" if session_id else "")
        if on_ready is not None:
            on_ready(url, server.port)
        if open_browser:
            webbrowser.open(url)
        (stop or threading.Event()).wait()
