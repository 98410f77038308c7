"""The Rankings page's predictor-arena tab through AppTest: table, figure, single seeds, no file.

With a checkpoint beside it (the shipped arena file): tests/test_app_rankings.py."""
from __future__ import annotations

import json

import pytest

from test_app_support import app_env, charts, no_exception, page, table, texts

from narformer_core import arena

PAGE = "pages/2_Rankings.py"


def runs_file(folder, runs):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / arena.ARENA_FILE).write_text(json.dumps({"labels": "nb201-val", "val_size": 200, "runs": runs}))


def one(predictor, n, seed, tau, fit=2.0, **kw):
    return {"predictor": predictor, "train_size": n, "seed": seed, "tau": tau, "fit_wall_s": fit, **kw}


@pytest.fixture
def env(monkeypatch, tmp_path):
    app_env(monkeypatch, tmp_path, None)            # no checkpoint at all: the arena needs none
    results = tmp_path / "results"
    monkeypatch.setenv("NARFORMER_RESULTS_DIR", str(results))
    return results


def test_the_arena_table_and_plot_show_without_any_checkpoint(env):
    runs = [one("gin", n, s, t) for n, ts in ((100, (0.60, 0.66)), (781, (0.80, 0.82))) for s, t in enumerate(ts)]
    runs += [one("narformer", 781, 0, 0.84, fit=None, source="checkpoint x/nb201-781.pt (200 epochs)")]
    runs_file(env, runs)
    at = page(PAGE)
    at.run()
    no_exception(at)
    assert "No trained NB201 checkpoint found" in texts(at)       # the other tab stopped early
    grid = table(at, "predictor")
    assert list(grid.columns) == ["predictor", "100 cells", "781 cells"]
    rows = dict(zip(grid["predictor"], grid["781 cells"]))
    assert rows["GIN"] == "0.810 ± 0.010 (2 seeds) · fit 2.0 s"
    assert rows["NAR-Former"] == "0.840 (1 seed only, no spread) · fit time not recorded"
    assert "One seed only, so no spread: NAR-Former at 781 cells" in texts(at)
    assert "checkpoint x/nb201-781.pt" in texts(at)
    fig = next(f for f in charts(at) if f["layout"].get("xaxis", {}).get("type") == "log")
    names = [t["name"] for t in fig["data"]]
    assert names == ["NAR-Former", "GIN"]
    gin = fig["data"][1]
    assert gin["error_y"]["visible"] and len(gin["x"]) == 2


def test_a_missing_results_file_says_which_command_makes_it(env):
    at = page(PAGE)
    at.run()
    no_exception(at)
    assert f"No predictor-arena results at `{env / arena.ARENA_FILE}`" in texts(at)
    assert "scripts/bench_arena.py" in texts(at)
    assert not [d for d in at.dataframe if "predictor" in d.value.columns]


def test_a_broken_results_file_is_an_error_message_not_a_traceback(env):
    env.mkdir()
    (env / arena.ARENA_FILE).write_text('{"runs": [{"predictor": "gin"}]}')
    at = page(PAGE)
    at.run()
    no_exception(at)
    assert "Cannot show the predictor arena" in texts(at) and "run 0 lacks train_size, seed, tau" in texts(at)


def test_the_averaged_arena_is_one_choice_away(env):
    runs_file(env, [one("gin", 781, s, t) for s, t in enumerate((0.80, 0.82))])
    averaged = [dict(one("gin", 781, s, t), equivalence="mean") for s, t in enumerate((0.84, 0.86))]
    (env / arena.EQUIVALENCE_FILE).write_text(json.dumps({"labels": "nb201-val", "runs": averaged}))
    at = page(PAGE)
    at.run()
    no_exception(at)
    assert table(at, "predictor")["781 cells"].iloc[0].startswith("0.810 ± 0.010")
    at.radio(key="arena_scores").set_value("averaged over equivalent cells")
    at.run()
    no_exception(at)
    assert table(at, "predictor")["781 cells"].iloc[0].startswith("0.850 ± 0.010")
    assert arena.EQUIVALENCE_FILE in texts(at)


def test_without_the_averaged_file_there_is_no_choice(env):
    runs_file(env, [one("gin", 781, 0, 0.8)])
    at = page(PAGE)
    at.run()
    assert not [r for r in at.radio if r.key == "arena_scores"]
