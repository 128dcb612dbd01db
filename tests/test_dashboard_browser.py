"""The dashboard end to end in a real browser: Debian's ``chromium``, headless, driven through
``chromedriver`` by Selenium, against a session whose workers are real processes and whose
last task is still running (it waits on a gate file the test opens).

Selenium rather than the DevTools protocol by hand: the WebDriver protocol is what
``chromedriver`` (Debian's ``chromium-driver``) speaks, Selenium's waits poll the DOM with a
deadline (no sleeps), and it needs no WebSocket code of our own. The browser and the driver
come from ``tests/host-services`` (apt), never downloaded by Selenium: both paths are given.

The screenshot of the running session is saved to ``$STARBURST_ARTIFACTS/dashboard.png``
(default ``build/dashboard.png`` in the repository; ``dashboard-seaweed.png`` for the session
on SeaweedFS, read over S3) and its path printed (``pytest -rP``).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import wait
from pathlib import Path
from typing import Any

import pytest

from starburst_executor.dashboard.server import DashboardServer
from starburst_executor.sessions import SessionReader, codec_for
from starburst_executor.stores import open_store

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parent.parent
ACCENT = (47, 111, 223)  # the charts' colour (--accent in index.html)


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:  # fail, not skip: CI must run this test (tests/host-services installs them)
        pytest.fail(
            f"{', '.join(missing)} not found: run tests/host-services (it installs Debian's "
            "chromium and chromium-driver)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,1100",
        "--disable-dev-shm-usage",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _artifact(kind: str) -> Path:
    folder = Path(os.environ.get("STARBURST_ARTIFACTS") or REPO / "build")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / ("dashboard.png" if kind == "local" else f"dashboard-{kind}.png")


def _pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """``(width, height, rows of RGB bytes)`` of an 8-bit RGB or RGBA, non-interlaced PNG (what
    Chromium's screenshots are), decoded with the standard library."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and not interlace, "an unexpected PNG format"
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        previous = line
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
    return width, height, rows


def _count(
    rows: list[bytes], box: dict[str, float], match: Callable[[tuple[int, ...]], bool]
) -> int:
    x0, y0 = int(box["x"]), int(box["y"])
    x1, y1 = x0 + int(box["width"]), y0 + int(box["height"])
    return sum(
        1
        for row in rows[y0:y1]
        for x in range(x0, min(x1, len(row) // 3))
        if match(tuple(row[3 * x : 3 * x + 3]))
    )


@contextlib.contextmanager
def _opened_at_exit(gate: Path) -> Iterator[None]:
    """Open the gate however the test ends, so the held task does not keep its worker (and
    the executor's shutdown) waiting for its own timeout after a failure."""
    try:
        yield
    finally:
        gate.write_text("open")


@pytest.mark.parametrize("executor_store", ["local", "seaweed"], indirect=True)
def test_the_dashboard_shows_a_running_session_in_chromium(
    browser: Any,
    make_executor: Callable[..., Any],
    executor_store: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    import executor_tasks as tasks
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gate = tmp_path / "gate"
    ex = make_executor(max_workers=2, name="browser <script>alert(1)</script>")
    finished = [ex.submit(tasks.square, i) for i in range(4)]
    finished.append(ex.submit(tasks.raise_at, 3, 3))
    # Submitted once the others are done: calls submitted together travel in one batch, whose
    # results come back together (the held task would hold the others' results back).
    assert not wait(finished, timeout=30).not_done
    held = ex.submit(tasks.wait_for_gate, str(gate), "held")
    store = open_store(executor_store)
    reader = SessionReader(store, ex.session_id, codec_for(store))
    assert not held.done()

    with DashboardServer(store) as server, _opened_at_exit(gate):
        browser.get(f"{server.url}#{ex.session_id}")
        until = WebDriverWait(browser, 20).until

        def text(css: str) -> str:
            return str(browser.find_element(By.CSS_SELECTOR, css).text)

        until(lambda _: text("#count-completed") == "4" and text("#count-running") == "1")
        assert (text("#count-failed"), text("#count-pending"), text("#count-total")) == (
            "1",
            "0",
            "6",
        )
        # The failure with its remote traceback, as text (the name's markup too: escaped).
        failure = browser.find_element(By.CSS_SELECTOR, "#failures li.failure")
        assert "ValueError: ('bad item', 3)" in failure.text
        traceback = failure.find_element(By.CSS_SELECTOR, "pre.traceback").text
        assert "in raise_at" in traceback and 'raise ValueError("bad item", x)' in traceback
        assert "<script>alert(1)</script>" in text("#session-title")
        assert browser.find_elements(By.CSS_SELECTOR, "#session-title script") == []

        # One timeline row per worker the store knows, with the finished tasks' bars.
        # (a worker may register after a poll: wait until the page shows the store's set)
        def rows_match(_: Any) -> set[str] | None:
            rows = browser.find_elements(By.CSS_SELECTOR, "#timeline g.worker-row")
            workers = {w.worker for w in reader.workers()}
            shown = {str(r.get_attribute("data-worker")) for r in rows}
            return workers if shown == workers and workers else None

        workers = until(rows_match)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.run")) == 5
        table = browser.find_elements(By.CSS_SELECTOR, "#workers tbody tr")
        assert {r.get_attribute("data-worker") for r in table} == workers
        assert sum(int(r.find_elements(By.TAG_NAME, "td")[3].text) for r in table) == 5
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.run.failed")) == 1
        bins = browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bin")
        assert sum(int(b.get_attribute("data-count")) for b in bins) == 5
        assert browser.find_elements(By.CSS_SELECTOR, "#throughput path.series")
        assert text("#session-state") == "open"

        png = browser.get_screenshot_as_png()
        path = _artifact(request.node.callspec.params["executor_store"])
        path.write_bytes(png)
        print(f"dashboard screenshot (running session): {path}")
        width, height, rows_px = _pixels(png)
        assert (width, height) == tuple(
            browser.execute_script("return [window.innerWidth, window.innerHeight]")
        )
        colours = {row[i : i + 3] for row in rows_px[::7] for i in range(0, len(row), 21)}
        assert len(colours) > 20, "the screenshot is (nearly) one colour"
        near_accent = lambda p: all(abs(a - b) < 40 for a, b in zip(p, ACCENT))  # noqa: E731
        for chart in ("#histogram", "#throughput"):
            box = browser.find_element(By.CSS_SELECTOR, chart).rect
            assert _count(rows_px, box, near_accent) > 50, f"nothing drawn in {chart}"

        # Live: the page picks up the held task's end by itself.
        gate.write_text("open")
        assert held.result(timeout=30) == "held"
        until(lambda _: text("#count-completed") == "5" and text("#count-running") == "0")
        until(lambda _: text("#session-state") == "finished")
