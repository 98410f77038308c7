"""The home page (app.py) through AppTest: compose a cell, predict, rank among all 15,625, truth."""
from __future__ import annotations

import numpy as np
import pytest

from test_app_support import app_env, array, charts, no_exception, page, table, texts, tiny_checkpoints  # noqa: F401

from narformer_core.spaces import nb201


@pytest.fixture
def at(monkeypatch, tmp_path, tiny_checkpoints):
    app_env(monkeypatch, tmp_path, tiny_checkpoints)
    return page("app.py")


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_first_render_composes_predicts_and_ranks(at):
    at.run()
    no_exception(at)
    out = texts(at)
    assert "NAR-Former" in out and "Compose an NB201 cell" in out
    assert metric(at, "Predicted accuracy").endswith("%")
    rank = int(metric(at, "Predicted rank of 15,625").replace(",", ""))
    assert 1 <= rank <= nb201.N_ARCHS
    truth = table(at, "true rank")
    assert truth["source"].iloc[0] == "analog"
    assert str(truth["true rank"].iloc[0]).endswith("/ 15,625")
    # The cell is drawn: 8 nodes in one marker trace.
    dag = charts(at)[0]
    assert any(len(array(t.get("x", []))) == 8 and "markers" in t.get("mode", "") for t in dag["data"])
    # Links to the other pages.
    assert {p.proto.label for p in at.get("page_link")} >= {"Architecture", "Rankings", "Training"}


def test_changing_an_edge_updates_prediction_rank_and_truth(at):
    at.run()
    before = (metric(at, "Predicted accuracy"), table(at, "true rank")["accuracy %"].iloc[0])
    at.selectbox(key="home_edge_0").set_value("none")
    at.selectbox(key="home_edge_1").set_value("none")
    at.selectbox(key="home_edge_3").set_value("none")
    at.run()
    no_exception(at)
    # Input disconnected from the output: the analog label of such a cell is chance (10 %).
    assert table(at, "true rank")["accuracy %"].iloc[0] == pytest.approx(10.0, abs=0.5)
    after = (metric(at, "Predicted accuracy"), table(at, "true rank")["accuracy %"].iloc[0])
    assert after != before
    assert "|none~0|+|none~0|" in texts(at)
    # ... and is one of the 341 cells that output zeros, which share one prediction.
    assert "outputs zeros, like 340 other cells" in texts(at)


def test_prediction_matches_the_model_on_that_cell(at, tiny_checkpoints):
    from narformer_core.predictors import NARFormerPredictor

    at.run()
    p = NARFormerPredictor.from_checkpoint(tiny_checkpoints / "nb201-tiny.pt")
    ops = nb201.parse(at.code[0].value)
    expected = float(p.predict_graphs([nb201.to_graph(ops)])[0])
    assert metric(at, "Predicted accuracy") == f"{expected:.2f} %"


def test_random_and_reset_buttons(at):
    at.run()
    default = at.code[0].value
    seen = set()
    for _ in range(3):
        at.button(key="home_random").click().run()
        no_exception(at)
        seen.add(at.code[0].value)
    assert len(seen) > 1 or default not in seen
    at.button(key="home_reset").click().run()
    assert at.code[0].value == default


def test_checkpoint_choice_lists_runs_too(at, tmp_path, tiny_checkpoints):
    import shutil

    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoints / "nb201-tiny.pt", run / "best.pt")
    (run / "config.json").write_text('{"space": "nb201"}')
    at.run()
    options = at.selectbox(key="home_checkpoint").options
    assert options[0].startswith("nb201-tiny") and "runs/mine/best.pt" in options
    at.selectbox(key="home_checkpoint").set_value("runs/mine/best.pt").run()
    no_exception(at)
    assert "Predicted rank" in texts(at)


def test_without_a_checkpoint_the_page_says_how_to_train_one(monkeypatch, tmp_path):
    app_env(monkeypatch, tmp_path, None)
    at = page("app.py").run()
    no_exception(at)
    out = texts(at)
    assert "No trained NB201 checkpoint found" in out
    assert "python -m narformer_core train" in out
    # Ground truth still shows.
    assert np.isfinite(table(at, "true rank")["accuracy %"].iloc[0])


def test_an_ensemble_checkpoint_and_its_shipped_predictions(monkeypatch, tmp_path, tiny_checkpoints):
    """An ensemble file is described as one; predictions stored beside it are used, not recomputed."""
    import shutil

    import torch

    from narformer_core import app_services as svc
    from narformer_core.ensemble import build_ensemble
    from narformer_core.train import TrainConfig, train
    from test_app_support import TINY_MODEL

    cfg = TrainConfig(model=dict(TINY_MODEL), epochs=1, train_size=64, val_size=32, labels="analog",
                      device="cpu", save_every_s=1e9, batch_size=32, threads=1, init_seed=1)
    before = torch.get_num_threads()
    try:
        train(cfg, tmp_path / "second", resume=False, progress=False)
    finally:
        torch.set_num_threads(before)
    cdir = tmp_path / "ckpts"
    cdir.mkdir()
    ens = cdir / "nb201-ens.pt"
    torch.save(build_ensemble([tiny_checkpoints / "nb201-tiny.pt", tmp_path / "second" / "best.pt"]), ens)
    # Stored predictions that no model makes: the default cell on top, the rest in a ramp (a rank
    # of 1 and a percentile of 100 show that the page read them instead of predicting).
    index = nb201.index_of(svc.nb201_default_cell())
    stored = np.linspace(20.0, 90.0, nb201.N_ARCHS)
    stored[index] = 99.0
    svc.write_precomputed_predictions(ens, stored)
    app_env(monkeypatch, tmp_path, cdir)
    at = page("app.py")
    at.run()
    no_exception(at)
    assert "validation tau not recorded" in texts(at)      # assembled without package_ensemble.py
    assert metric(at, "Predicted rank of 15,625") == "1"
    assert metric(at, "Percentile") == "100.0 %"
    assert metric(at, "Predicted accuracy") == "99.00 %"        # the cell's own value, looked up too
    shutil.rmtree(tmp_path / "second")
