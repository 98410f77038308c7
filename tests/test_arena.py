"""Arena results: loading, aggregation over seeds, the predictor x train size grid, the figure."""
import json

import numpy as np
import pytest

from narformer_core import arena as A
from narformer_core import plots


def run(predictor, n, seed, tau, fit=1.0, **kw):
    return {"predictor": predictor, "train_size": n, "seed": seed, "tau": tau, "n_test": 15625 - n - 200,
            "fit_wall_s": fit, "fit_cpu_s": None if fit is None else fit / 2, "predict_wall_s": 0.1, "predict_cpu_s": 0.05, **kw}


RUNS = [run("gin", 100, s, t, fit=10.0 + s) for s, t in enumerate((0.60, 0.64, 0.68))] + \
       [run("gin", 781, s, t, fit=50.0) for s, t in enumerate((0.80, 0.82))] + \
       [run("gbdt", 100, s, t, fit=0.5, selection={"selected_on": "200 validation cells"})
        for s, t in enumerate((0.50, 0.40))] + \
       [run("gbdt", 781, 0, 0.63, fit=1.5)] + \
       [run("narformer", 781, 0, 0.8428, fit=None, source="checkpoint checkpoints/nb201-781.pt (200 epochs)")] + \
       [run("zen", 100, 0, 0.27, fit=1e-4)]


def write(tmp_path, res, name=A.ARENA_FILE):
    p = tmp_path / name
    p.write_text(json.dumps(res) if not isinstance(res, str) else res)
    return p


def test_mean_and_spread_over_seeds_per_predictor_and_train_size(tmp_path):
    res = A.load_arena(write(tmp_path, {"labels": "nb201-val", "runs": RUNS, "table": []}))
    f = A.arena_frame(res)
    gin = f[(f["predictor"] == "gin") & (f["train_size"] == 100)].iloc[0]
    assert gin["n_seeds"] == 3 and gin["seeds"] == [0, 1, 2]
    assert gin["tau_mean"] == pytest.approx(0.64) and gin["tau_std"] == pytest.approx(np.std([0.60, 0.64, 0.68]))
    assert (gin["tau_min"], gin["tau_max"]) == (pytest.approx(0.60), pytest.approx(0.68))
    assert gin["fit_wall_s"] == pytest.approx(11.0) and not gin["single_seed"]
    nf = f[f["predictor"] == "narformer"].iloc[0]
    assert nf["single_seed"] and nf["n_seeds"] == 1 and nf["name"] == "NAR-Former"
    # predictors in display order (NAR-Former first, the training-free score last), then by size
    assert list(f["predictor"]) == ["narformer", "gin", "gin", "gbdt", "gbdt", "zen"]
    assert list(f["train_size"][1:3]) == [100, 781]
    # GBDT runs without a record of what they selected on are of the old, unfair size rule
    old = dict(zip(zip(f["predictor"], f["train_size"]), f["old_gbdt_rule"]))
    assert old[("gbdt", 781)] and not old[("gbdt", 100)] and not old[("gin", 100)]


def test_the_grid_reads_predictor_by_train_size_and_says_single_seed(tmp_path):
    g = A.arena_grid(A.arena_frame({"runs": RUNS}))
    assert list(g.columns) == ["predictor", "100 cells", "781 cells"]
    assert list(g["predictor"]) == ["NAR-Former", "GIN", "GBDT", "Zen (zero-cost)"]
    cell = dict(zip(g["predictor"], g["100 cells"]))
    assert cell["GIN"] == f"0.640 ± {np.std([0.60, 0.64, 0.68]):.3f} (3 seeds) · fit 11 s"
    assert cell["GBDT"] == "0.450 ± 0.050 (2 seeds) · fit 0.5 s"
    assert cell["Zen (zero-cost)"] == "0.270 (1 seed only, no spread) · fit < 0.1 s"
    assert cell["NAR-Former"] == "–"                                 # no run at that size
    big = dict(zip(g["predictor"], g["781 cells"]))
    assert big["NAR-Former"] == "0.843 (1 seed only, no spread) · fit time not recorded"
    assert big["GBDT"].startswith("0.630 (1 seed only, no spread) †")
    assert A.other_sources(A.arena_frame({"runs": RUNS})) == {
        "NAR-Former": ["781 cells: checkpoint checkpoints/nb201-781.pt (200 epochs)"]}


def test_the_table_is_recomputed_from_the_runs_not_read_from_the_file(tmp_path):
    stale = [{"predictor": "gin", "train_size": 100, "n_seeds": 1, "tau_mean": 0.99}]
    f = A.arena_frame(A.load_arena(write(tmp_path, {"runs": RUNS, "table": stale})))
    assert f[(f["predictor"] == "gin") & (f["train_size"] == 100)]["tau_mean"].item() == pytest.approx(0.64)


def test_the_bench_table_keeps_its_rounded_json_form():
    t = A.arena_table(RUNS)
    row = next(r for r in t if r["predictor"] == "gin" and r["train_size"] == 100)
    assert row["tau_std"] == round(float(np.std([0.60, 0.64, 0.68])), 4) and row["source"] == "bench arena"
    # the CLI's bench and scripts/bench_arena.py use this very function
    from narformer_core import cli_search
    assert cli_search.arena_table is A.arena_table


def test_missing_and_broken_files(tmp_path, monkeypatch):
    monkeypatch.setenv("NARFORMER_RESULTS_DIR", str(tmp_path))
    assert A.arena_file() == tmp_path / A.ARENA_FILE
    assert A.load_arena() is None
    write(tmp_path, "{not json")
    with pytest.raises(A.ArenaFileError, match="not readable JSON"):
        A.load_arena()
    with pytest.raises(A.ArenaFileError, match="no list of runs"):
        A.load_arena(write(tmp_path, {"table": []}, "b.json"))
    with pytest.raises(A.ArenaFileError, match="run 1 lacks tau"):
        A.load_arena(write(tmp_path, {"runs": [RUNS[0], {"predictor": "gin", "train_size": 5, "seed": 0}]}, "c.json"))
    with pytest.raises(A.ArenaFileError, match="between -1 and 1"):
        A.load_arena(write(tmp_path, {"runs": [run("gin", 100, 0, 3.0)]}, "d.json"))
    assert A.arena_frame({"runs": []}).empty and A.arena_grid(A.arena_frame({"runs": []})).empty


def test_the_shipped_results_file_loads():
    res = A.load_arena(A.PROJECT_ROOT / "assets" / "results" / A.ARENA_FILE)
    if res is None:
        pytest.skip("assets/results/arena_nb201.json is not in this checkout")
    f = A.arena_frame(res)
    assert {"gin", "mlp", "gbdt", "zen"} <= set(f["predictor"]) and (f["n_seeds"] >= 1).all()


def test_figure_has_a_line_per_predictor_with_error_bars_except_single_seeds():
    fig = plots.arena_taus(A.arena_frame({"runs": RUNS}))
    traces = {t.name: t for t in fig.data}
    assert list(traces) == ["NAR-Former", "GIN", "GBDT", "Zen (zero-cost)"]
    gin = traces["GIN"]
    assert list(gin.x) == [100, 781] and gin.y[0] == pytest.approx(0.64)
    assert gin.error_y.array[0] == pytest.approx(np.std([0.60, 0.64, 0.68])) and gin.error_y.visible
    assert traces["NAR-Former"].error_y.array[0] == 0 and traces["NAR-Former"].marker.symbol[0] == "circle-open"
    assert "1 seed only" in traces["NAR-Former"].hovertemplate[0]
    assert fig.layout.xaxis.type == "log"
