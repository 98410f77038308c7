"""End to end: `streamlit run app.py` on 127.0.0.1, driven in headless Debian Chromium.

Composes a cell and sees a prediction, uploads an ONNX file and sees its token heatmap, launches a
short real training run and sees its tau curve grow, and saves a screenshot of every page to
docs/screenshots/. Skipped (with the reason) only when /usr/bin/chromium is missing.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness import (ROOT, browser_page, chromium_available, heatmap_shapes, metric_value,  # noqa: E402
                     plotly_traces, select_option, streamlit_app, wait_idle, wait_until)
from test_app_support import small_onnx_bytes, tiny_checkpoint_dir  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not chromium_available(), reason="Debian chromium is not installed (/usr/bin/chromium missing): "
                                     "apt-get install -y chromium")]
SHOTS = ROOT / "docs" / "screenshots"


def latency_dir(base: Path) -> Path:
    """The project's measured zoo networks and its latency predictor when present; else a FLOPs
    regression fitted on those networks; else nothing (the pages then say what is missing)."""
    out = base / "latency"
    out.mkdir()
    assets = ROOT / "assets" / "latency"
    if (assets / "zoo_cpu.jsonl.gz").exists():
        shutil.copy(assets / "zoo_cpu.jsonl.gz", out)
        if (assets / "narformer_latency.pt").exists():
            shutil.copy(assets / "narformer_latency.pt", out)
        else:
            os.environ["NARFORMER_LATENCY_DIR"] = str(out)
            try:
                from narformer_core import app_services as svc
                from narformer_core.latency.predictors import make_predictor

                zoo = svc.latency_dataset()
                p = make_predictor("flops").fit(list(zoo["graph"]), zoo["median_ms"].to_numpy())
                p.meta["platform_key"] = zoo["platform_key"].iloc[0]
                p.save(out / "flops_regression.pt")
            finally:
                del os.environ["NARFORMER_LATENCY_DIR"]
    return out


def checkpoint_dir(tmp_path_factory) -> Path:
    """The shipped checkpoints when the project has them (what a newcomer sees), else a tiny one."""
    shipped = ROOT / "assets" / "checkpoints"
    if (shipped / "nb201-781.pt").exists():
        return shipped
    return tiny_checkpoint_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    env = {"NARFORMER_CHECKPOINT_DIR": str(checkpoint_dir(tmp_path_factory)),
           "NARFORMER_RUNS_DIR": str(base / "runs"), "NARFORMER_LATENCY_DB": str(base / "latency.db"),
           "NARFORMER_LATENCY_DIR": str(latency_dir(base)), "NARFORMER_CALIBRATION_DIR": str(base / "calibration")}
    (base / "runs").mkdir()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with streamlit_app(env, log_path=base / "streamlit.log") as (url, _proc, _t0):
        with browser_page(width=1400, height=1800) as page:
            yield url, page, base
    # Stop any training this test launched (its folder is ours).
    from narformer_core import runs

    for info in runs.list_runs(base / "runs"):
        if info.active and runs.pid_alive(info.pid, str(info.path)):
            os.kill(info.pid, signal.SIGKILL)


def shot(page, name: str) -> None:
    wait_idle(page)
    page.wait_for_timeout(1500)         # let plotly and the tables finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_compose_a_cell_and_see_a_prediction(app):
    url, page, _ = app
    page.goto(url)
    page.get_by_text("Compose an NB201 cell").wait_for()
    page.get_by_text("Predicted rank").wait_for(timeout=300_000)
    wait_idle(page)
    assert metric_value(page, "Predicted accuracy").endswith("%")
    assert 1 <= int(metric_value(page, "Predicted rank of 15,625").replace(",", "")) <= 15_625
    shot(page, "home")
    select_option(page, "edge 0 → 1", "none")
    page.get_by_text("|none~0|+|nor_conv_3x3~0|").wait_for()
    wait_idle(page)
    assert metric_value(page, "Predicted accuracy").endswith("%")
    assert page.get_by_text("analog", exact=True).count() >= 1      # the ground-truth table


def test_upload_onnx_and_see_the_heatmap(app):
    url, page, base = app
    page.goto(f"{url}/Architecture")
    page.get_by_role("tab", name="Compose NB201").wait_for()
    wait_until(page, lambda: (9, 192) in heatmap_shapes(page))       # the default cell's tokens
    shot(page, "architecture")
    model = base / "tiny.onnx"
    model.write_bytes(small_onnx_bytes())
    page.get_by_role("tab", name="Upload ONNX").click()
    page.get_by_text("Limit: 50 MB").wait_for()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(model))
    page.get_by_text("tiny.onnx").first.wait_for()
    shape = wait_until(page, lambda: [s for s in heatmap_shapes(page) if s[1] == 480])
    assert shape[0][0] >= 5                                           # operators + end token
    page.get_by_text("FLOPs (MACs)").wait_for()
    shot(page, "architecture_onnx")


def test_launch_training_and_see_the_tau_curve_grow(app):
    url, page, base = app
    page.goto(f"{url}/Training")
    page.get_by_text("Launch a new run").wait_for()
    # Many epochs of a tiny model: the curve grows every refresh, and the run is stopped from the page.
    # The page's maximum: on a loaded machine 3,000 epochs could finish before the Stop click.
    for label, value in (("Training architectures", "32"), ("Validation architectures", "32"),
                         ("Epochs", "10000"), ("Batch size", "16")):
        page.get_by_role("spinbutton", name=label, exact=True).fill(value)
    select_option(page, "Model size", "tiny (d=32, 1+3 blocks)")
    page.get_by_role("textbox", name="Run name (empty: automatic)").fill("e2e")
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("Started").first.wait_for()

    def points() -> int:
        return max((t["n"] for t in plotly_traces(page) if t["name"] == "e2e · raw"), default=0)

    first = wait_until(page, points, timeout_s=600, every_ms=500)
    grown = wait_until(page, lambda: points() > first and points(), timeout_s=300, every_ms=500)
    assert grown > first >= 1
    shot(page, "training")
    # The page's own button: while a rerun is slow, Streamlit's header shows a "Stop" button too.
    page.get_by_role("button", name="⏹ Stop", exact=True).click()
    page.get_by_text("e2e is stopped").wait_for(timeout=300_000)
    from narformer_core import runs

    info = runs.get_run("e2e", base / "runs")
    assert info.state == "stopped" and info.epoch < 10000 and info.resumable


def test_screenshots_of_the_other_pages(app):
    url, page, _ = app
    for path, name, marker in (("Rankings", "rankings", "Kendall's tau (all)"),
                               ("Latency_lab", "latency_lab", "This machine: the latency database"),
                               ("Data", "data", "rows match")):
        page.goto(f"{url}/{path}")
        page.get_by_text(marker).first.wait_for(timeout=300_000)
        shot(page, name)
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000


def test_calibrate_the_latency_checkpoint_to_this_machine(app):
    """Five zoo networks timed for real from the Latency lab; the Architecture page then predicts
    this machine's milliseconds."""
    url, page, base = app
    if not (base / "latency" / "narformer_latency.pt").exists():
        pytest.skip("no shipped latency checkpoint to calibrate")
    page.goto(f"{url}/Latency_lab")
    page.get_by_text("This machine's milliseconds").first.wait_for(timeout=300_000)
    slider = page.get_by_role("slider").last            # "Zoo networks to time", the page's last slider
    slider.focus()
    for _ in range(3):                                   # 20 -> 5 in steps of 5
        slider.press("ArrowLeft")
        wait_idle(page)
    page.get_by_role("button", name="Time 5 zoo networks here and calibrate").click()
    page.get_by_text("Calibrated on 5 zoo networks timed here").wait_for(timeout=300_000)
    wait_idle(page)
    assert metric_value(page, "Networks timed") == "5"
    assert list((base / "calibration").glob("*.json"))
    model = base / "tiny.onnx"
    model.write_bytes(small_onnx_bytes())
    page.goto(f"{url}/Architecture")
    page.get_by_role("tab", name="Upload ONNX").click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(model))
    page.get_by_text("Predicted latency, this machine").first.wait_for(timeout=300_000)
    assert metric_value(page, "Predicted latency, this machine").endswith(" ms")
