"""The Latency lab and Data pages through AppTest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_app_support import app_env, array, charts, no_exception, page, small_onnx_bytes, table, texts

from narformer_core import app_services
from narformer_core.spaces import nb201

LAB, DATA = "pages/4_Latency_lab.py", "pages/5_Data.py"
needs_shared = pytest.mark.skipif(not app_services.shared_data_available(),
                                  reason="the shared benchmark files are not on this machine")


@pytest.fixture
def env(monkeypatch, tmp_path):
    return app_env(monkeypatch, tmp_path, None)


def metric(at, label_start: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def store_measurement(predicted_ms: float | None = None) -> dict:
    from narformer_core.onnx_import import load_onnx

    data = small_onnx_bytes()
    graph = load_onnx(data)
    res = app_services.measure_and_store(data, graph, family="tiny", description="tiny conv net", repeats=5)
    if predicted_ms is not None:
        db = app_services.open_latency_db()
        db.add_measurement(res["graph_hash"], res["platform_key"], median_ms=predicted_ms, source="predicted")
        db.close()
    return res


# ---------------------------------------------------------------- latency lab
@needs_shared
def test_cell_latency_on_a_device(env):
    at = page(LAB).run()
    no_exception(at)
    arch = at.text_input(key="lat_arch").value
    index = nb201.index_of(nb201.parse(arch))
    table_all = app_services.nb201_device_table()
    expected = table_all["1080ti_1"].iloc[index]
    assert metric(at, "Latency on 1080ti_1") == f"{expected:.3g} ms"
    assert len(table(at, "percentile (faster than)")) == 31
    hist = [f for f in charts(at) if any(t.get("type") == "histogram" for t in f["data"])]
    assert hist and hist[0]["layout"]["shapes"]      # the selected cell's line


@needs_shared
def test_device_choice_log_scale_and_edge_devices(env):
    at = page(LAB).run()
    at.selectbox(key="lat_device").set_value("pixel3").run()
    no_exception(at)
    assert "Latency on pixel3" in texts(at)
    at.toggle(key="lat_logx").set_value(True).run()
    hist = [f for f in charts(at) if any(t.get("type") == "histogram" for t in f["data"])][0]
    assert hist["layout"]["xaxis"]["title"]["text"].startswith("log10")
    # nn-Meter devices know 2,000 cells; the default cell may be unmeasured there: either is shown.
    at.selectbox(key="lat_device").set_value("vpu").run()
    no_exception(at)
    assert metric(at, "Cells measured on this device") in ("1,999", "2,000")


@needs_shared
def test_bad_arch_string_and_random_button(env):
    at = page(LAB).run()
    at.text_input(key="lat_arch").set_value("|conv~0|+nonsense").run()
    no_exception(at)
    assert at.error and "Not an NB201 cell" in at.error[0].value
    at.button(key="lat_random").click().run()
    no_exception(at)
    assert not at.error
    nb201.parse(at.text_input(key="lat_arch").value)


def test_database_section_lists_measurements_and_predictions(env):
    at = page(LAB).run()
    no_exception(at)
    assert "Nothing measured yet" in texts(at)
    res = store_measurement(predicted_ms=1.0)
    at.run()
    no_exception(at)
    rows = table(at, "platform_key")
    assert list(rows["family"]) == ["tiny", "tiny"] and set(rows["source"]) == {"measured", "predicted"}
    assert metric(at, "Graphs") == "1" and metric(at, "Predicted") == "1"
    at.selectbox(key="lat_db_platform").set_value(res["platform_key"]).run()
    no_exception(at)
    # One graph with both a prediction and a measurement: compared.
    assert metric(at, "Graphs with both") == "1"
    assert metric(at, "MAPE (database)").endswith("%")


# ---------------------------------------------------------------- data
@pytest.mark.parametrize("dataset,column", [("nb201", "analog"), ("nb101", "module_hash"),
                                            ("latency", "pixel3"), ("fbnet", "blocks")])
def test_every_dataset_renders(env, dataset, column):
    if dataset != "nb201" and not app_services.shared_data_available():
        pytest.skip("the shared benchmark files are not on this machine")
    at = page(DATA).run()
    at.selectbox(key="data_set").set_value(dataset).run()
    no_exception(at)
    assert column in table(at, column).columns
    assert at.get("download_button")


def test_filters_and_download(env):
    at = page(DATA).run()
    at.number_input(key="data_rows").set_value(20_000)
    at.text_input(key="data_filter_text").set_value("none~0|+|none~0").run()
    no_exception(at)
    shown = table(at, "arch_str")
    assert len(shown) == 5 ** 4 and shown["arch_str"].str.startswith("|none~0|+|none~0|").all()
    at.selectbox(key="data_filter_col").set_value("analog").run()
    slider = at.slider(key="data_range_nb201_analog")
    lo, hi = slider.value
    slider.set_value((lo, 10.5)).run()
    no_exception(at)
    shown = table(at, "arch_str")
    assert (shown["analog"] <= 10.5).all() and len(shown) < 5 ** 4
    assert f"{len(shown):,} of 15,625 rows match" in texts(at)


def test_latency_database_dataset(env):
    at = page(DATA).run()
    at.selectbox(key="data_set").set_value("db").run()
    no_exception(at)
    assert "The table is empty" in texts(at)
    store_measurement()
    at.run()
    assert list(table(at, "median_ms")["family"]) == ["tiny"]


def test_predicted_vs_measured_on_the_zoo(env, monkeypatch, tmp_path_factory):
    from test_app_support import latency_predictor_dir

    lat_dir = latency_predictor_dir(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(lat_dir))
    at = page(LAB).run()
    no_exception(at)
    assert at.selectbox(key="lat_pred_ckpt").value == "flops.pt"
    if (lat_dir / "zoo_cpu.jsonl.gz").exists():
        assert int(metric(at, "Zoo networks")) == len(app_services.latency_dataset())
        assert metric(at, "MAPE").endswith("%")
    else:
        assert "No measured zoo networks" in texts(at)


DEV_SET = app_services.PROJECT_ROOT / "assets" / "latency" / app_services.DEV_LATENCY_SET


def mini_latency_dir(tmp_path, n: int):
    """A latency folder holding the development set's first ``n`` networks as a data set of its own:
    (folder, data set file, records, graphs, median ms)."""
    import gzip

    from narformer_core.latency.dataset import load_dataset

    lat_dir = tmp_path / "lat"
    lat_dir.mkdir()
    with gzip.open(DEV_SET, "rt") as f:
        lines = [next(f) for _ in range(n)]
    own = lat_dir / "mini.jsonl.gz"
    with gzip.open(own, "wt") as f:
        f.writelines(lines)
    records, graphs, y = load_dataset(own)
    return lat_dir, own, records, graphs, y


@pytest.mark.skipif(not DEV_SET.exists(), reason="the measured development set is not in assets/latency")
def test_the_lab_scores_a_predictor_on_the_networks_it_held_out(env, monkeypatch, tmp_path):
    """A predictor whose own data set is in the latency folder is scored on its test networks only."""
    from narformer_core.latency.predictors import make_predictor
    from narformer_core.metrics import mape

    lat_dir, own, records, graphs, y = mini_latency_dir(tmp_path, 30)
    test = [2, 7, 11, 19, 23, 29]
    train = [i for i in range(30) if i not in test]
    p = make_predictor("flops").fit([graphs[i] for i in train], y[train])
    p.meta.update({"dataset": "assets/latency/mini.jsonl.gz", "n_networks": 30, "test_indices": test,
                   "column": "median_ms", "platform_key": records[0]["platform_key"],
                   "pretrain": {"set": "zoo5000_seed16.jsonl.gz", "networks": 5000}})
    p.save(lat_dir / "flops.pt")
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(lat_dir))
    at = page(LAB).run()
    no_exception(at)
    assert int(metric(at, "Held-out networks")) == len(test)
    expected = mape(p.predict([graphs[i] for i in test]), y[test])
    assert metric(at, "MAPE") == f"{expected:.1f} %"
    assert "never saw while training (of 30)" in " ".join(c.value for c in at.caption)
    assert "Pretrained on 5,000 unmeasured zoo networks" in " ".join(c.value for c in at.caption)
    # Without its test list the same predictor is scored on every network, and says so.
    p.meta.pop("test_indices")
    p.save(lat_dir / "flops.pt")
    at = page(LAB).run()
    assert int(metric(at, "Zoo networks")) == 30
    assert metric(at, "MAPE") == f"{mape(p.predict(graphs), y):.1f} %"


def test_no_latency_predictor_checkpoint(env):
    at = page(LAB).run()
    no_exception(at)
    assert "No trained latency predictor" in texts(at)


def test_calibrate_a_checkpoint_to_this_machine_from_the_lab(env, monkeypatch, tmp_path_factory):
    """The button times zoo networks here (for real), stores them, and the section shows the fit."""
    import os

    from test_app_support import latency_predictor_dir

    from narformer_core.latency.predictors import load_predictor

    lat_dir = latency_predictor_dir(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(lat_dir))
    p = load_predictor(lat_dir / "flops.pt")
    assert not p.meta.get("platform_key")      # made up, unrecorded: not this machine's platform
    at = page(LAB).run()
    no_exception(at)
    assert "Time a few zoo networks here" in texts(at)
    at.slider(key="lat_cal_k").set_value(5).run()
    at.button(key="lat_cal_go").click().run()
    no_exception(at)
    assert metric(at, "Networks timed") == "5"
    assert metric(at, "Speed ratio here").endswith("x")
    assert "Calibrated on 5 zoo networks timed here" in texts(at)
    assert len(os.listdir(os.environ["NARFORMER_CALIBRATION_DIR"])) == 1
    # The five timings are in the latency database, as measurements of this machine.
    assert int(metric(at, "Measurements")) == 5


@pytest.mark.skipif(not DEV_SET.exists(), reason="the measured development set is not in assets/latency")
def test_the_lab_uses_stored_held_out_predictions_only_of_the_same_checkpoint_file(env, monkeypatch, tmp_path):
    import json

    from narformer_core.latency.predictors import make_predictor
    from narformer_core.metrics import mape

    lat_dir, own, records, graphs, y = mini_latency_dir(tmp_path, 20)
    test = [1, 5, 9, 14]
    p = make_predictor("flops").fit([g for i, g in enumerate(graphs) if i not in test],
                                    np.delete(y, test))
    p.meta.update({"dataset": "assets/latency/mini.jsonl.gz", "n_networks": 20, "test_indices": test,
                   "column": "median_ms", "platform_key": records[0]["platform_key"]})
    ckpt = p.save(lat_dir / "flops.pt")
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(lat_dir))
    true_pred = p.predict([graphs[i] for i in test])
    # Stored predictions that differ from the model's, to see which ones the page shows.
    fake = true_pred * 2.0
    app_services.write_heldout_predictions(ckpt, own, "median_ms", test, fake)
    at = page(LAB).run()
    no_exception(at)
    assert metric(at, "MAPE") == f"{mape(fake, y[test]):.1f} %"
    # Another checkpoint file under the same name: the stored numbers are not its own.
    p.meta["note"] = "refitted"
    p.save(ckpt)
    assert app_services.heldout_predictions(ckpt, own, "median_ms", test) is None
    at = page(LAB).run()
    assert metric(at, "MAPE") == f"{mape(true_pred, y[test]):.1f} %"
    json.loads(app_services.heldout_predictions_file(ckpt).read_text())   # still a readable file
    app_services.heldout_predictions_file(ckpt).write_text("{ damaged")
    assert app_services.heldout_predictions(ckpt, own, "median_ms", test) is None


@pytest.mark.parametrize("name", ["narformer_latency.pt", "nnlp_latency.pt", "narformer_latency_intel_xeon.pt"])
def test_shipped_held_out_predictions_are_the_checkpoints_own(name):
    """The stored numbers the Latency lab shows are what the shipped checkpoint predicts today."""
    from narformer_core.latency.predictors import load_predictor

    ckpt = app_services.PROJECT_ROOT / "assets" / "latency" / name
    if not app_services.heldout_predictions_file(ckpt).exists():
        pytest.skip("no stored held-out predictions")
    pred = load_predictor(ckpt)
    reference = app_services.PROJECT_ROOT / "assets" / "latency" / Path(pred.meta["dataset"]).name
    assert reference.is_file()                    # its own data set ships, so its held-out networks are known
    df = app_services.latency_dataset(pred.meta["platform_key"], pred.meta["column"], reference)
    rows = app_services.held_out_rows(pred.meta, reference, len(df))
    stored = app_services.heldout_predictions(ckpt, reference, pred.meta["column"], rows)
    assert stored is not None
    fresh = pred.predict(list(df["graph"].to_numpy()[rows]))
    np.testing.assert_allclose(stored, fresh, rtol=1e-4)
