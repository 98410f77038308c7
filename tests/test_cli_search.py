"""Command line: search and the arena/search benches print valid JSON; bad arguments exit 2."""
import json

import pytest

from narformer_core.cli import BENCHES, main
from narformer_core.data import DataUnavailable, shared_file

try:
    shared_file("nb201_full_val_acc_naslib.csv")
    shared_file("nb201_latency_help_27devices.csv.gz")
except DataUnavailable as e:  # pragma: no cover - only without the shared data folder
    pytest.skip(str(e), allow_module_level=True)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_search_prints_json(capsys):
    code, out, err = run(capsys, "search", "--algo", "evolution", "--budget", "25", "--seed", "1", "--json",
                         "--history", "--population", "8", "--sample-size", "3")
    assert code == 0
    d = json.loads(out)
    assert d["evaluations"] == 25 and d["budget"] == 25 and len(d["history"]) == 25
    assert d["labels"] == "nb201-val" and set(d["best"]["test"]) == {"nb201-test", "analog"}
    assert d["regret"]["nb201-val"] >= 0 and d["options"] == {"population_size": 8, "sample_size": 3}
    assert "\n" not in out.strip()                       # --json: one line


def test_search_with_a_latency_budget_and_a_guide(capsys):
    code, out, _ = run(capsys, "search", "--algo", "predictor", "--predictor", "gbdt", "--budget", "20",
                       "--device-latency", "raspi4", "--latency-budget", "200", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["objective"]["device"] == "raspi4" and d["objective"]["budget_ms"] == 200
    assert d["objective"]["best_latency_ms"] <= 200 and d["pareto"]
    assert all(p["latency_ms"] <= 200 for p in d["pareto"])


@pytest.mark.parametrize("argv,message", [
    (["--device-latency", "toaster"], "unknown latency device 'toaster'"),
    (["--budget", "-4"], "--budget must be a positive"),
    (["--budget", "0"], "--budget must be a positive"),
    (["--latency-budget", "3"], "--latency-budget needs --device-latency"),
    (["--device-latency", "pixel3", "--latency-budget", "-1"], "--latency-budget must be a positive"),
    (["--device-latency", "pixel3", "--latency-budget", "0.001"], "no NB201 cell runs within"),
    (["--algo", "predictor", "--predictor", "oracle"], "unknown predictor 'oracle'"),
    (["--labels", "imagenet"], "unknown NB201 label source 'imagenet'"),
    (["--algo", "random", "--population", "5"], "apply to --algo evolution only"),
    (["--budget", "20000"], "exceeds the 15625 cells"),
])
def test_bad_search_arguments_exit_2_with_one_line(capsys, argv, message):
    code, out, err = run(capsys, "search", *argv)
    assert code == 2 and out == ""
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_benches_are_registered():
    assert {"arena", "search"} <= set(BENCHES)


def test_bench_arena_prints_one_table(capsys):
    code, out, err = run(capsys, "bench", "arena", "--predictors", "zen,gbdt", "--train-sizes", "100",
                         "--seeds", "0,1", "--json", "--quiet")
    assert code == 0
    d = json.loads(out)
    assert d["labels"] == "nb201-val" and len(d["runs"]) == 4
    rows = {r["predictor"]: r for r in d["table"]}
    assert set(rows) == {"zen", "gbdt"}
    for r in rows.values():
        assert r["train_size"] == 100 and r["n_seeds"] == 2 and r["seeds"] == [0, 1]
        assert -1 <= r["tau_mean"] <= 1 and r["tau_std"] >= 0 and r["fit_wall_s"] >= 0
    assert rows["gbdt"]["tau_mean"] > rows["zen"]["tau_mean"] - 0.5
    assert all(run["n_test"] == 15625 - 300 for run in d["runs"])


def test_the_arena_can_average_every_predictor_over_equivalent_cells(capsys):
    args = ("bench", "arena", "--predictors", "zen", "--train-sizes", "100", "--seeds", "0", "--json", "--quiet")
    own = json.loads(run(capsys, *args)[1])["runs"][0]
    mean = json.loads(run(capsys, *args, "--equivalence", "mean")[1])["runs"][0]
    assert (own["equivalence"], mean["equivalence"]) == ("off", "mean")
    assert own["n_test"] == mean["n_test"] and own["tau"] != mean["tau"]
    assert mean["tau_own_outputs"] == pytest.approx(own["tau"])      # zen is deterministic


def test_bench_search_prints_a_table(capsys):
    code, out, err = run(capsys, "bench", "search", "--algos", "random,evolution", "--budgets", "10,20",
                         "--seeds", "0-2", "--json", "--quiet")
    assert code == 0
    d = json.loads(out)
    assert [(r["algo"], r["budget"]) for r in d["table"]] == [("random", 10), ("random", 20),
                                                               ("evolution", 10), ("evolution", 20)]
    assert all(r["n_seeds"] == 3 for r in d["table"]) and len(d["runs"]) == 6
    r20 = d["table"][1]
    assert r20["regret[nb201-val]"]["mean"] <= d["table"][0]["regret[nb201-val]"]["mean"]
    assert len(d["runs"][0]["best_curve"]) == 20


@pytest.mark.parametrize("argv,message", [
    (["arena", "--predictors", "svm"], "unknown predictor(s) svm"),
    (["arena", "--train-sizes", "ten"], "--train-sizes must be whole numbers"),
    (["search", "--algos", "random,annealing"], "unknown search 'annealing'"),
    (["search", "--algos", "predictor:svm"], "unknown search 'predictor:svm'"),
    (["search", "--budgets", "0,10"], "--budgets must be positive"),
    (["search", "--device-latency", "toaster"], "unknown latency device"),
])
def test_bad_bench_arguments_exit_2(capsys, argv, message):
    code, out, err = run(capsys, "bench", *argv)
    assert code == 2 and message in err and out == ""
