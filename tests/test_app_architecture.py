"""The Architecture page, driven through streamlit.testing.v1.AppTest: every tab and its widgets,
good and bad uploads, NB101 validation as you edit, the model zoo, latency measurement."""
from __future__ import annotations

import numpy as np
import pytest

from test_app_support import (app_env, array, charts, no_exception, page, small_onnx_bytes, table,  # noqa: F401
                              texts, tiny_checkpoints, trace_types)

PAGE = "pages/1_Architecture.py"


@pytest.fixture
def at(monkeypatch, tmp_path, tiny_checkpoints):
    app_env(monkeypatch, tmp_path, tiny_checkpoints)
    return page(PAGE)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return small_onnx_bytes()


def pick_dag(at, key: str) -> None:
    """Draw the graph ourselves rather than start Netron (when Netron is installed)."""
    radios = [r for r in at.radio if r.key == key]
    if radios and radios[0].value != "DAG":
        radios[0].set_value("DAG")
        at.run()


def open_tab(at, name: str):
    at.session_state["arch_tab"] = name
    return at.run()


def test_nb201_tab_draws_cell_tokens_prediction_and_truth(at):
    at.run()
    no_exception(at)
    out = texts(at)
    assert "Predicted accuracy" in out and "Predicted rank" in out
    assert "Predicted rank of 15,625" in out
    truth = table(at, "true rank")
    assert "analog" in list(truth["source"])
    heat = [f for f in charts(at) if any(t.get("type") == "heatmap" for t in f["data"])]
    assert heat, "no token heatmap"
    z = array(heat[0]["data"][0]["z"])
    assert z.shape == (9, 192)                      # 8 nodes + end token, 192 values each
    ticks = heat[0]["layout"]["xaxis"]["ticktext"]
    assert ticks == ["op type", "position", "sources"]
    assert heat[0]["data"][0]["customdata"][0][0] == "op type [0]"
    assert heat[0]["data"][0]["customdata"][0][70] == "position [6]"
    assert "node: %{y}" in heat[0]["data"][0]["hovertemplate"] and "slot" in heat[0]["data"][0]["hovertemplate"]


def test_nb201_edge_change_changes_prediction_and_truth(at):
    at.run()
    truth_before = table(at, "true rank")["accuracy %"].iloc[0]
    for k in range(6):
        at.selectbox(key=f"arch_nb201_edge_{k}").set_value("none")
    at.run()
    no_exception(at)
    assert "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|" in texts(at)
    truth_after = table(at, "true rank")["accuracy %"].iloc[0]
    assert truth_after == pytest.approx(10.0, abs=0.5) and truth_after != truth_before
    assert "Predicted accuracy" in texts(at)


def test_nb201_network_build_static_features_and_measure(at):
    at.run()
    at.toggle(key="arch_nb201_build").set_value(True)
    at.run()
    pick_dag(at, "arch_nb201_net_view")
    no_exception(at)
    out = texts(at)
    assert "FLOPs (MACs)" in out and "Parameters" in out
    assert "No trained latency predictor found" in out        # the test folder has none
    at.button(key="arch_nb201_net_measure").click().run()
    no_exception(at)
    assert "Measured" in texts(at) and "stored in" in texts(at)
    assert "fastest run" in texts(at)          # the statistic the shipped predictors learnt
    assert len(table(at, "platform_key")) == 1


def test_upload_good_onnx_shows_heatmap_features(at, onnx_bytes):
    open_tab(at, "Upload ONNX")
    assert "Limit: 50 MB" in texts(at)
    at.file_uploader(key="arch_upload").set_value(("tiny.onnx", onnx_bytes, "application/octet-stream"))
    at.run()
    pick_dag(at, "arch_onnx_view")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    out = texts(at)
    assert "tiny.onnx" in out and "Conv" in out
    heat = [f for f in charts(at) if any(t.get("type") == "heatmap" for t in f["data"])]
    z = array(heat[0]["data"][0]["z"])
    assert z.shape[1] == 480
    assert heat[0]["layout"]["xaxis"]["ticktext"][:3] == ["op type", "self position", "source positions"]
    assert len(heat[0]["layout"]["xaxis"]["ticktext"]) == 15
    assert "FLOPs (MACs)" in out


def test_upload_netron_view_embeds_a_local_viewer(at, onnx_bytes):
    pytest.importorskip("netron")
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value(("tiny.onnx", onnx_bytes, "application/octet-stream"))
    at.run()
    no_exception(at)
    assert at.radio(key="arch_onnx_view").value == "Netron"
    assert "consent dialog" in texts(at) and "http://127.0.0.1:" in texts(at)
    frames = at.get("iframe")
    assert frames and "127.0.0.1" in str(frames[0].proto)


@pytest.mark.parametrize("name,data,expect", ids=["random-bytes", "empty", "text"], argvalues=[
    ("random.onnx", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "Could not read random.onnx"),
    ("empty.onnx", b"", "Could not read empty.onnx"),
    ("notes.onnx", b"this is a text file, not a model\n" * 20, "Could not read notes.onnx"),
])
def test_bad_uploads_show_an_error_not_a_traceback(at, name, data, expect):
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value((name, data, "application/octet-stream"))
    at.run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert errors and expect in errors[0], errors
    assert "Traceback" not in errors[0]


def test_truncated_onnx_shows_an_error(at, onnx_bytes):
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value(("cut.onnx", onnx_bytes[: len(onnx_bytes) // 2], "application/octet-stream"))
    at.run()
    no_exception(at)
    assert at.error and "Could not read cut.onnx" in at.error[0].value


def test_oversized_upload_is_refused_with_the_limit(at, onnx_bytes, monkeypatch):
    from narformer_core import app_services

    monkeypatch.setattr(app_services, "MAX_ONNX_BYTES", 1000)
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value(("big.onnx", onnx_bytes, "application/octet-stream"))
    at.run()
    no_exception(at)
    assert at.error and "over the limit" in at.error[0].value


def test_nb101_default_cell_is_valid_and_tokenized(at):
    open_tab(at, "Compose NB101")
    no_exception(at)
    assert any("Valid cell" in s.value for s in at.success)
    heat = [f for f in charts(at) if any(t.get("type") == "heatmap" for t in f["data"])]
    assert array(heat[0]["data"][0]["z"]).shape[1] == 192
    # No NB101 checkpoint in the test folder: the page says how to train one.
    assert "No trained NB101 checkpoint" in texts(at)


@pytest.mark.parametrize("edits,message", [
    ({3: {"→1": True}}, "strictly upper triangular"),          # node 3 feeding the earlier node 1
    ({0: {"→1": False, "→2": False}}, "no path leads from the input to the output"),
    ({i: {f"→{j}": True for j in range(i + 1, 7)} for i in range(7)}, "at most 9"),
])
def test_nb101_matrix_edits_are_validated(at, edits, message):
    open_tab(at, "Compose NB101")
    at.session_state["arch_nb101_matrix"] = {"edited_rows": edits, "added_rows": [], "deleted_rows": []}
    at.run()
    no_exception(at)
    errors = [e.value for e in at.error]
    assert errors and message in errors[0], errors


def test_nb101_op_change_changes_module_hash(at):
    open_tab(at, "Compose NB101")
    first = [s.value for s in at.success if "Valid cell" in s.value][0]
    at.selectbox(key="arch_nb101_op_1").set_value("maxpool3x3").run()
    no_exception(at)
    second = [s.value for s in at.success if "Valid cell" in s.value][0]
    assert first != second


def test_model_zoo_variant_builds_and_measures(at):
    open_tab(at, "Model zoo")
    at.selectbox(key="arch_zoo_family").set_value("nasbench201").run()
    at.select_slider(key="arch_zoo_res_nasbench201").set_value(32)
    at.slider(key="arch_zoo_seed").set_value(3)
    at.run()
    pick_dag(at, "arch_zoo_view")
    no_exception(at)
    out = texts(at)
    assert "nasbench201 @32px" in out and "FLOPs (MACs)" in out
    assert "heatmap" in trace_types(at)
    assert at.get("download_button")
    at.button(key="arch_zoo_measure").click().run()
    no_exception(at)
    assert "Measured" in texts(at)


def test_model_zoo_tab_builds_families_outside_the_zoo_and_says_so(at):
    open_tab(at, "Model zoo")
    at.selectbox(key="arch_zoo_family").set_value("vit").run()
    at.select_slider(key="arch_zoo_res_vit").set_value(96)
    at.run()
    no_exception(at)
    out = texts(at)
    assert "vit @96px, patch" in out and "training-only family" in out
    assert "heatmap" in trace_types(at)
    at.selectbox(key="arch_zoo_family").set_value("shufflenet_v2").run()
    at.select_slider(key="arch_zoo_res_shufflenet_v2").set_value(96)
    at.run()
    no_exception(at)
    out = texts(at)
    assert "shufflenet_v2 @96px" in out and "never trained on" in out
    # A resolution the family cannot take is an error message, not a crash.
    at.selectbox(key="arch_zoo_family").set_value("inception_v3").run()
    at.select_slider(key="arch_zoo_res_inception_v3").set_value(96)
    at.run()
    no_exception(at)
    assert any("Could not build this variant" in e.value and "at least 128" in e.value for e in at.error)


def upload_with_predictors(at, onnx_bytes, monkeypatch, tmp_path_factory):
    """The uploaded tiny ONNX model on the Architecture page, with the test predictors' folder."""
    from test_app_support import latency_predictor_dir

    lat_dir = latency_predictor_dir(tmp_path_factory.getbasetemp())
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(lat_dir))
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value(("tiny.onnx", onnx_bytes, "application/octet-stream"))
    at.run()
    pick_dag(at, "arch_onnx_view")
    return lat_dir


def test_latency_prediction_with_a_trained_predictor(at, onnx_bytes, monkeypatch, tmp_path_factory):
    from narformer_core.latency.predictors import load_predictor
    from narformer_core.onnx_import import load_onnx

    lat_dir = upload_with_predictors(at, onnx_bytes, monkeypatch, tmp_path_factory)
    no_exception(at)
    assert at.selectbox(key="arch_onnx_latency_ckpt").value == "flops.pt"
    expected = float(load_predictor(lat_dir / "flops.pt").predict([load_onnx(onnx_bytes)])[0])
    shown = next(m.value for m in at.metric if m.label == "Predicted latency")
    assert shown == f"{expected:.3f} ms"


def test_operator_cost_predictor_shows_where_the_time_goes(at, onnx_bytes, monkeypatch, tmp_path_factory):
    from narformer_core.latency.predictors import load_predictor
    from narformer_core.onnx_import import load_onnx

    lat_dir = upload_with_predictors(at, onnx_bytes, monkeypatch, tmp_path_factory)
    at.selectbox(key="arch_onnx_latency_ckpt").set_value("opcost.pt").run()
    no_exception(at)
    assert any(e.label == "Where the time goes (per operator kind)" for e in at.expander)
    # The bars add up to the predicted latency: the operator-cost sum is exactly that sum.
    costs = load_predictor(lat_dir / "opcost.pt").model.breakdown(load_onnx(onnx_bytes))
    shown = next(m.value for m in at.metric if m.label == "Predicted latency")
    assert shown == f"{sum(r['ms'] for r in costs if r['ms'] is not None):.3f} ms"
    assert "bar" in trace_types(at)
    # Kinds split by channel blocks (the tiny net's first conv reads 3 channels) are explained.
    assert any(r["kind"].endswith("/c1") for r in costs)
    assert any("A kind ending in /c8 or /c1" in c.value for c in at.caption)


def test_latency_without_a_trained_predictor_says_how_to_train(at, onnx_bytes):
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value(("tiny.onnx", onnx_bytes, "application/octet-stream"))
    at.run()
    pick_dag(at, "arch_onnx_view")
    no_exception(at)
    assert "No trained latency predictor found" in texts(at)
    assert "latency train" in texts(at)


def test_latency_prediction_names_operator_types_the_predictor_never_saw(at, onnx_bytes, monkeypatch, tmp_path):
    """A NAR-Former checkpoint records its training operator types; an upload with another one
    gets a warning that names it."""
    import torch
    import torch.nn as nn

    from narformer_core.latency.predictors import NARFormerLatency
    from narformer_core.onnx_import import from_torch, load_onnx

    graphs = []
    for width in (4, 8, 16, 32):
        net = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(width, 10)).eval()
        graphs.append(from_torch(net, torch.zeros(1, 3, 16, 16)))
    p = NARFormerLatency(model={"d_model": 16, "n_heads": 2, "ffn_dim": 32, "depths": (1, 1, 1, 1),
                                "head_hidden": 16}, train={"epochs": 1, "batch_size": 4})
    p.fit(graphs, [0.1, 0.2, 0.4, 0.8], val=(graphs[:2], [0.1, 0.2]))
    uploaded = {n.op for n in load_onnx(onnx_bytes).nodes} - {"input"}
    missing = sorted(uploaded)[0]
    p.known_ops = sorted(uploaded - {missing})       # as if no training network had that type
    lat_dir = tmp_path / "lat"
    p.save(lat_dir / "nar.pt")
    monkeypatch.setenv("NARFORMER_LATENCY_DIR", str(lat_dir))
    open_tab(at, "Upload ONNX")
    at.file_uploader(key="arch_upload").set_value(("tiny.onnx", onnx_bytes, "application/octet-stream"))
    at.run()
    pick_dag(at, "arch_onnx_view")
    no_exception(at)
    warning = [w.value for w in at.warning if "never saw these operator types" in w.value]
    assert len(warning) == 1 and missing in warning[0]
    assert any(m.label == "Predicted latency" for m in at.metric)
    assert not any("unpretrained" in i.value for i in at.info)
    # A pretrained checkpoint beside an unpretrained one points to it for such a network.
    p.meta["pretrain"] = {"set": "zoo5000_seed16.jsonl.gz", "networks": 5000}
    p.save(lat_dir / "nar.pt")
    p.meta.pop("pretrain")
    p.save(lat_dir / "nar_unpretrained.pt")
    at.run()
    no_exception(at)
    assert any("`nar_unpretrained.pt` (pick it above)" in i.value for i in at.info)


def test_a_calibrated_checkpoint_predicts_this_machines_milliseconds(at, onnx_bytes, monkeypatch, tmp_path_factory):
    import os

    from test_app_support import latency_graphs

    from narformer_core import app_services
    from narformer_core.latency import calibration as calib
    from narformer_core.latency.predictors import load_predictor
    from narformer_core.onnx_import import load_onnx

    lat_dir = upload_with_predictors(at, onnx_bytes, monkeypatch, tmp_path_factory)
    assert any(m.label == "Predicted latency" for m in at.metric)      # no calibration yet
    pred = load_predictor(lat_dir / "flops.pt")
    # flops.pt's calibration for this machine, fitted on made-up timings: every network 2.5x slower here.
    cal_graphs = latency_graphs()
    p = pred.predict(cal_graphs)
    cal = calib.fit_host_calibration(cal_graphs, 2.5 * p, p, platform_key=app_services.here_platform_key(),
                                     checkpoint_sha256=calib.file_sha256(lat_dir / "flops.pt"),
                                     checkpoint_platform="cpu-elsewhere")
    cal.save(calib.calibration_path(cal.checkpoint_sha256, cal.platform_key, os.environ["NARFORMER_CALIBRATION_DIR"]))
    at.run()
    no_exception(at)
    expected = 2.5 * float(pred.predict([load_onnx(onnx_bytes)])[0])
    shown = next(m.value for m in at.metric if m.label == "Predicted latency, this machine")
    assert shown == f"{expected:.3f} ms"
    assert "calibrated to this machine" in " ".join(c.value for c in at.caption)
    # A damaged calibration file: the page says so and predicts in the checkpoint's milliseconds.
    calib.calibration_path(cal.checkpoint_sha256, cal.platform_key,
                           os.environ["NARFORMER_CALIBRATION_DIR"]).write_text("[]")
    at.run()
    no_exception(at)
    assert any(m.label == "Predicted latency" for m in at.metric)
    assert any("calibration of flops.pt cannot be used" in w.value for w in at.warning)
