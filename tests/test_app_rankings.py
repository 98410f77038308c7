"""The Rankings page through AppTest: checkpoint, label source, scope, top-k, baselines."""
from __future__ import annotations

import numpy as np
import pytest

from test_app_support import app_env, charts, no_exception, page, table, texts, tiny_checkpoints  # noqa: F401

from narformer_core import app_services

PAGE = "pages/2_Rankings.py"


@pytest.fixture
def at(monkeypatch, tmp_path, tiny_checkpoints):
    app_env(monkeypatch, tmp_path, tiny_checkpoints)
    return page(PAGE)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_ranking_of_all_cells_against_the_truth(at, tiny_checkpoints):
    at.run()
    no_exception(at)
    assert metric(at, "Architectures shown") == "15,625"
    tau = float(metric(at, "Kendall's tau (all)"))
    # The page's tau is the real one: recompute it from the checkpoint.
    from narformer_core.metrics import kendall_tau
    from narformer_core.predictors import NARFormerPredictor
    from narformer_core.tasks import load_task

    p = NARFormerPredictor.from_checkpoint(tiny_checkpoints / "nb201-tiny.pt")
    source = at.selectbox(key="rank_labels").value
    truth = app_services.nb201_labels(source)
    ok = np.isfinite(truth)
    assert tau == pytest.approx(kendall_tau(p.predict(load_task("nb201"))[ok], truth[ok]), abs=1e-3)
    types = [t.get("type") for f in charts(at) for t in f["data"]]
    assert "scattergl" in types and "histogram" in types
    top = table(at, "predicted rank")
    assert len(top) == 20 and top["predicted"].is_monotonic_decreasing
    # the arena tab beside it reads the project's saved results (tests/test_rankings_arena.py has the rest)
    from narformer_core.arena import arena_file

    if arena_file().exists():
        assert {"GIN", "MLP", "GBDT", "Zen (zero-cost)"} <= set(table(at, "predictor")["predictor"])


def test_unseen_scope_drops_the_training_and_validation_cells(at):
    at.run()
    at.radio(key="rank_scope").set_value("unseen").run()
    no_exception(at)
    assert metric(at, "Architectures shown") == f"{15625 - 64 - 32:,}"


def test_top_k_slider(at):
    at.run()
    at.slider(key="rank_topk").set_value(50).run()
    no_exception(at)
    assert len(table(at, "predicted rank")) == 50
    assert "Top 50 by prediction" in texts(at)


@pytest.mark.skipif(not app_services.shared_data_available(), reason="the shared NB201 files are not on this machine")
def test_other_label_source(at):
    at.run()
    at.selectbox(key="rank_labels").set_value("nb201-test").run()
    no_exception(at)
    # The official test accuracies exist for the 8,689 cells >= 90 % only.
    assert metric(at, "Architectures shown") == "8,689"


@pytest.mark.skipif(not app_services.baseline_names(), reason="narformer_core/baselines.py is not there")
def test_a_baseline_beside_narformer(at):
    at.run()
    assert "gbdt" in at.multiselect(key="rank_baselines").options
    at.multiselect(key="rank_baselines").set_value(["gbdt"]).run()
    no_exception(at)
    bars = [f for f in charts(at) if any(t.get("type") == "bar" for t in f["data"])]
    assert bars and list(bars[0]["data"][0]["x"]) == ["NAR-Former", "gbdt"]
    hist = [f for f in charts(at) if any(t.get("type") == "histogram" for t in f["data"])]
    assert [t["name"] for t in hist[0]["data"]] == ["NAR-Former", "gbdt"]


def test_nb101_without_checkpoint_says_how_to_train(at):
    at.run()
    at.radio(key="rank_space").set_value("nb101").run()
    no_exception(at)
    assert "No trained NB101 checkpoint found" in texts(at)
    assert "--space nb101" in texts(at)
