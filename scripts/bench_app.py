"""App responsiveness: cold start to first render, and the compose-to-prediction round trip warm.

    python scripts/bench_app.py [--repeats 10] [--port 0]

Starts ``streamlit run app.py`` as a fresh process on 127.0.0.1 and drives the home page in
headless Debian Chromium (/usr/bin/chromium) through Playwright:

* cold start: process start -> /_stcore/health answers -> first render (the cell composer is on
  screen) -> the prediction with its rank among all 15,625 cells is on screen. The app caches
  the 15,625 predictions per checkpoint on disk (st.cache_data(persist="disk")), so the last
  figure depends on whether this checkpoint was seen before; both cases are labelled.
* warm round trip: change one edge of the cell and wait until the new arch string and the new
  prediction are drawn and the script run is over; the median and p90 over --repeats changes.

Also reports the server-side script time of one compose (streamlit.testing AppTest, no browser).
Figures go to stdout as a table and one JSON line. Without chromium only the AppTest figure is
measured. The checkpoint is whatever the app finds (assets/checkpoints, then runs/*/best*.pt).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "e2e")]

from harness import (browser_page, chromium_available, free_port, metric_value, select_option,  # noqa: E402
                     streamlit_app, wait_idle)

EDGE, OPTIONS = "edge 2 → 3", ["none", "conv 1x1", "avg pool", "conv 3x3", "skip"]
ARCH_OPS = {"none": "none", "conv 1x1": "nor_conv_1x1", "avg pool": "avg_pool_3x3",
            "conv 3x3": "nor_conv_3x3", "skip": "skip_connect"}


class ScriptEvents:
    """Times at which the server said a script run finished (ForwardMsg.script_finished)."""

    def __init__(self, page):
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.finished: list[float] = []
        self._msg = ForwardMsg

        def on_ws(ws):
            ws.on("framereceived", self._frame)

        page.on("websocket", on_ws)

    def _frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        m = self._msg()
        try:
            m.ParseFromString(payload)
        except Exception:  # a frame that is not a ForwardMsg: not ours to time
            return
        if m.WhichOneof("type") == "script_finished":
            self.finished.append(time.perf_counter())


def browser_figures(repeats: int, port: int) -> dict:
    out: dict = {}
    # The browser is up before the app starts, as a user's browser would be.
    with browser_page(height=1200) as page, \
            streamlit_app(port=port or free_port(), log_path=Path("/tmp/bench_app_streamlit.log")) as (url, _p, t0):
        out["health_s"] = time.perf_counter() - t0
        events = ScriptEvents(page)
        page.goto(url)
        page.get_by_text("Compose an NB201 cell").wait_for(timeout=600_000)
        out["first_render_s"] = time.perf_counter() - t0
        page.get_by_text("Predicted rank of").wait_for(timeout=900_000)
        wait_idle(page, timeout_s=900)
        out["prediction_shown_s"] = time.perf_counter() - t0
        server, shown = [], []
        for k in range(repeats + 1):
            option = OPTIONS[k % len(OPTIONS)]
            page.get_by_role("combobox", name=EDGE, exact=True).first.click()
            n_before = len(events.finished)
            t = time.perf_counter()
            page.get_by_role("option", name=option, exact=True).first.click()
            # The new cell drawn and its prediction delivered (the run that made them finished).
            page.get_by_text(f"{ARCH_OPS[option]}~2|", exact=False).first.wait_for()
            while len(events.finished) <= n_before:
                page.wait_for_timeout(5)
            done = max(time.perf_counter(), events.finished[n_before])
            if k:                      # the first change warms the page's caches
                server.append(events.finished[n_before] - t)
                shown.append(done - t)
            wait_idle(page)
        out["round_trip_ms"] = [round(1000 * x, 1) for x in shown]
        out["server_run_ms"] = [round(1000 * x, 1) for x in server]
    return out


def apptest_figure(repeats: int) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    t = time.perf_counter()
    at.run()
    first = time.perf_counter() - t
    times = []
    for k in range(repeats):
        at.selectbox(key="home_edge_5").set_value(list(ARCH_OPS.values())[k % 5])
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
    return {"apptest_first_run_s": first, "apptest_compose_ms": [round(1000 * x, 1) for x in times]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    import os

    res: dict = {"load_avg_1min": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}
    if chromium_available() and not args.no_browser:
        res.update(browser_figures(args.repeats, args.port))
    else:
        res["browser"] = "skipped: /usr/bin/chromium is missing (apt-get install -y chromium)"
    res.update(apptest_figure(args.repeats))
    print(f"machine: {res['cores']} cores, 1-minute load average {res['load_avg_1min']} at start")
    if "first_render_s" in res:
        rt = res["round_trip_ms"]
        print(f"cold start: healthy {res['health_s']:.2f} s, first render {res['first_render_s']:.2f} s, "
              f"prediction + rank shown {res['prediction_shown_s']:.2f} s")
        sv = res["server_run_ms"]
        print(f"compose -> prediction (browser, warm, n={len(rt)}): median {statistics.median(rt):.0f} ms, "
              f"p90 {sorted(rt)[int(0.9 * (len(rt) - 1))]:.0f} ms, min {min(rt):.0f} ms "
              f"(click to script-finished message: median {statistics.median(sv):.0f} ms)")
    at = res["apptest_compose_ms"]
    print(f"compose script run (AppTest, no browser, n={len(at)}): median {statistics.median(at):.0f} ms; "
          f"first AppTest run {res['apptest_first_run_s']:.2f} s")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
