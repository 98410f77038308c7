"""Start the real app (``streamlit run app.py``) on 127.0.0.1 and drive it in Debian's Chromium.

Used by tests/e2e/test_browser.py and scripts/bench_app.py. Chromium is the browser of record:
``apt-get install -y chromium`` provides /usr/bin/chromium; Playwright drives it by path, so no
browser download is needed.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_available() -> bool:
    return Path(CHROMIUM).exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> float:
    """Poll /_stcore/health until it answers ok; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"streamlit did not become healthy at {url} within {timeout:.0f} s")


@contextmanager
def streamlit_app(env: dict | None = None, log_path: Path | None = None, port: int | None = None):
    """The app on a free port; yields (url, process, start time). Stops the process afterwards."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, proc)
        yield url, proc, started
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()


@contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(120_000)
            yield page
        finally:
            browser.close()


def wait_idle(page, timeout_s: float = 180.0) -> None:
    """Until the script run finished and drew: no running indicator, no placeholder skeletons,
    three checks in a row."""
    deadline = time.perf_counter() + timeout_s
    calm = 0
    while time.perf_counter() < deadline:
        running = (page.locator('[data-testid="stStatusWidget"]').count() > 0
                   or page.locator('[data-testid="stSkeleton"]').count() > 0)
        calm = 0 if running else calm + 1
        if calm >= 3:
            return
        page.wait_for_timeout(150)
    raise TimeoutError("the app kept running")


# Plotly keeps numeric arrays sent as typed arrays as {dtype, bdata, shape, _inputArray}.
_JS_LEN = """() => {
    const dims = a => !a ? [0, 0]
        : a.shape ? String(a.shape).split(',').map(Number).concat([1]).slice(0, 2)
        : a._inputArray ? [a._inputArray.length, 1]
        : [a.length || 0, (a[0] && a[0].length) || 1];
    const len = a => dims(a)[0];
    return """


def plotly_traces(page) -> list[dict]:
    """Type, name and point count of every trace of every plotly chart on the page."""
    return page.evaluate(_JS_LEN + """Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(
        (el, i) => (el.data || []).map(t => ({chart: i, type: t.type || 'scatter', name: t.name || '',
            n: len(t.x) || len(t.z)})))}""")


def select_option(page, label: str, option: str) -> None:
    """Pick ``option`` in the st.selectbox labelled ``label``."""
    page.get_by_role("combobox", name=label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).first.click()


def heatmap_shapes(page) -> list[tuple[int, int]]:
    """(rows, columns) of every heatmap on the page."""
    return [tuple(s) for s in page.evaluate(_JS_LEN + """Array.from(document.querySelectorAll('.js-plotly-plot'))
        .flatMap(el => (el.data || []).filter(t => t.type === 'heatmap').map(t => dims(t.z)))}""")]


def metric_value(page, label: str) -> str:
    """The value shown by the st.metric labelled ``label``."""
    m = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return m.locator('[data-testid="stMetricValue"]').inner_text().strip()


def wait_until(page, predicate, timeout_s: float = 180.0, every_ms: int = 500):
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(every_ms)
    raise TimeoutError("condition not met in the browser in time")
