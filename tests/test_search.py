"""Search: the oracle's accounting, budgets, determinism, regret, the latency constraint."""
import numpy as np
import pytest

from narformer_core.search import (BudgetExhausted, Oracle, Space, latency_objective, pareto_front,
                                   run_search, summarize)
from narformer_core.spaces import nb201

N = nb201.N_ARCHS
# A toy label array with a unique best cell: searches on it need no data files.
TOY = np.random.default_rng(123).permutation(N).astype(float) / 100.0
TOY_TEST = {"toy-test": TOY[::-1].copy()}
# A cheap guide configuration for the predictor-guided search
FAST = {"predictor": "gbdt", "predictor_kwargs": {"max_iter": 30}, "n_mutations": 5}


def test_oracle_counts_lookups_and_enforces_the_budget():
    calls = []
    o = Oracle(TOY, budget=3, progress=lambda n, b, best: calls.append((n, b, best)))
    assert o(10) == TOY[10] and o(10) == TOY[10]          # a repeat is not charged twice
    assert o.evaluations == 1 and o.lookups == 2 and o.remaining == 2
    o(11), o(12)
    assert o.evaluations == 3 and o.remaining == 0
    with pytest.raises(BudgetExhausted, match="budget of 3"):
        o(13)
    assert o(12) == TOY[12]                                # known cells stay free after the budget
    assert o.lookups == 6 and o.evaluations == 3
    assert [c[0] for c in calls] == [1, 2, 3]
    assert calls[-1][2] == max(TOY[10], TOY[11], TOY[12])
    assert [e.n for e in o.history] == [1, 2, 3]
    assert o.history[0].arch == nb201.to_arch_str(nb201.enumerate_all()[10])


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_oracle_rejects_a_non_positive_budget(bad):
    with pytest.raises(ValueError, match="positive whole number"):
        Oracle(TOY, budget=bad)


@pytest.mark.parametrize("algo,opts", [("random", {}), ("evolution", {}), ("predictor", FAST)])
def test_each_search_spends_exactly_its_budget_and_is_deterministic(algo, opts):
    a = run_search(algo, 40, seed=3, labels=TOY, test_labels=TOY_TEST, **opts)
    b = run_search(algo, 40, seed=3, labels=TOY, test_labels=TOY_TEST, **opts)
    c = run_search(algo, 40, seed=4, labels=TOY, test_labels=TOY_TEST, **opts)
    assert a.evaluations == 40 and len({e.index for e in a.history}) == 40
    assert [e.index for e in a.history] == [e.index for e in b.history]
    assert [e.index for e in a.history] != [e.index for e in c.history]
    curve = a.best_curve()
    assert np.all(np.diff(curve) >= 0) and curve[-1] == a.best_acc


@pytest.mark.parametrize("algo,opts", [("random", {}), ("evolution", {"population_size": 10}), ("predictor", FAST)])
def test_a_smaller_budget_is_a_prefix_of_a_larger_one(algo, opts):
    """Decisions never depend on the budget, which the bench relies on (budget b = first b evals)."""
    small = run_search(algo, 25, seed=1, labels=TOY, test_labels=TOY_TEST, **opts)
    big = run_search(algo, 45, seed=1, labels=TOY, test_labels=TOY_TEST, **opts)
    assert [e.index for e in small.history] == [e.index for e in big.history[:25]]
    cut = big.prefix(25)
    assert cut.best_index == small.best_index and cut.regret == small.regret and cut.test == small.test


def test_regret_on_a_toy_label_array():
    r = run_search("random", 7, seed=0, labels=TOY, test_labels=TOY_TEST)
    seen = np.array([e.index for e in r.history])
    best = seen[np.argmax(TOY[seen])]
    assert r.best_index == best and r.best_acc == TOY[best]
    assert r.regret["custom"] == pytest.approx(TOY.max() - TOY[best])
    assert r.test["toy-test"] == TOY_TEST["toy-test"][best]
    assert r.regret["toy-test"] == pytest.approx(TOY_TEST["toy-test"].max() - TOY_TEST["toy-test"][best])
    assert r.space_best["custom"]["index"] == int(np.argmax(TOY))
    # the whole space: the best is found and the regret is zero
    flat = np.zeros(N)
    flat[42] = 1.0
    r = run_search("random", N, seed=0, labels=flat, test_labels={})
    assert r.best_index == 42 and r.regret["custom"] == 0.0
    s = summarize([run_search("random", 5, seed=k, labels=TOY, test_labels=TOY_TEST) for k in range(3)])
    assert s["n_seeds"] == 3 and s["regret[custom]"]["mean"] >= 0 and "test[toy-test]" in s


def test_evolution_improves_on_random_search_on_a_smooth_landscape():
    # accuracy = number of conv 3x3 edges: evolution climbs it, random search rarely finds 6
    conv = np.array([sum(o == "nor_conv_3x3" for o in c) for c in nb201.enumerate_all()], float)
    evo = [run_search("evolution", 80, seed=s, labels=conv, test_labels={}).best_acc for s in range(5)]
    rnd = [run_search("random", 80, seed=s, labels=conv, test_labels={}).best_acc for s in range(5)]
    assert np.mean(evo) > np.mean(rnd)


def test_the_predictor_sees_only_evaluated_cells():
    from narformer_core.baselines import GBDTPredictor

    seen_by_fit = []

    class Spy(GBDTPredictor):
        def fit(self, task, train_idx, val_idx=None, seed=0, progress=False):
            labelled = np.flatnonzero(~np.isnan(task.y))
            seen_by_fit.append((set(labelled.tolist()), set(np.asarray(train_idx).tolist())))
            assert np.isnan(task.y_test).all()
            return super().fit(task, train_idx, val_idx, seed, progress)

    r = run_search("predictor", 30, seed=0, labels=TOY, test_labels={}, predictor=lambda: Spy(max_iter=20),
                   n_mutations=5)
    order = [e.index for e in r.history]
    assert len(seen_by_fit) == 2                                     # rounds after 10 and 20 evaluations
    for k, (labelled, train) in enumerate(seen_by_fit):
        assert labelled == train == set(order[: 10 * (k + 1)])
    assert r.options["predictor"] == "custom"


def test_predictor_guided_search_with_a_validation_share():
    r = run_search("predictor", 30, seed=2, labels=TOY, test_labels={}, val_fraction=0.3, **FAST)
    assert r.evaluations == 30 and r.options["val_fraction"] == 0.3


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown search algorithm"):
        run_search("annealing", 10, labels=TOY)
    with pytest.raises(ValueError, match="positive whole number"):
        run_search("random", -1, labels=TOY)
    with pytest.raises(ValueError, match="needs a device"):
        run_search("random", 10, labels=TOY, latency_budget=3.0)
    with pytest.raises(ValueError, match="unknown predictor"):
        run_search("predictor", 10, labels=TOY, predictor="oracle")
    with pytest.raises(ValueError, match="has no option"):
        run_search("evolution", 10, labels=TOY, population=3)
    with pytest.raises(ValueError, match="one value per NB201 cell"):
        run_search("random", 10, labels=np.zeros(5))
    with pytest.raises(ValueError, match="exceeds the"):
        run_search("random", N + 1, labels=TOY)


def test_pareto_front():
    lat = np.array([1.0, 2.0, 3.0, 2.0, 4.0, np.nan, 0.5])
    acc = np.array([50., 70., 60., 65., 80., 99., 40.])
    # (0.5, 40) (1, 50) (2, 70) (4, 80); (3, 60) and (2, 65) are dominated, NaN ignored
    assert pareto_front(lat, acc).tolist() == [6, 0, 1, 4]


def _toy_latency(device):
    """A latency 'predictor' for the hook: ms = number of conv edges (+ a device offset)."""
    conv = np.array([sum(o.startswith("nor_conv") for o in c) for c in nb201.enumerate_all()], float)
    return conv + (0.5 if device == "slow" else 0.0)


def test_latency_budget_via_the_hook_constrains_every_evaluation():
    r = run_search("evolution", 40, seed=0, labels=TOY, test_labels={}, device="fast", latency_budget=2.0,
                   latency_fn=_toy_latency)
    lat = _toy_latency("fast")
    assert all(lat[e.index] <= 2.0 for e in r.history)
    ok = lat <= 2.0
    assert r.regret["custom"] == pytest.approx(TOY[ok].max() - r.best_acc)     # regret within the feasible set
    assert r.objective["budget_ms"] == 2.0 and r.objective["n_feasible"] == int(ok.sum())
    assert r.objective["source"] == "_toy_latency"
    front = r.pareto
    assert [p["latency_ms"] for p in front] == sorted(p["latency_ms"] for p in front)
    assert all(a["acc"] < b["acc"] for a, b in zip(front, front[1:]))
    # latency without a budget: unconstrained, but the front is reported
    r = run_search("random", 30, seed=0, labels=TOY, test_labels={}, device="fast", latency_fn=_toy_latency)
    assert r.objective["budget_ms"] is None and r.pareto
    g = run_search("predictor", 30, seed=0, labels=TOY, test_labels={}, device="fast", latency_budget=1.0,
                   latency_fn=_toy_latency, **FAST)
    assert all(lat[e.index] <= 1.0 for e in g.history)


def test_infeasible_latency_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="no NB201 cell runs within"):
        latency_objective("fast", -0.0 + 1e-9, latency_fn=lambda d: _toy_latency(d) + 1.0)
    with pytest.raises(ValueError, match="positive number of ms"):
        latency_objective("fast", -2.0, latency_fn=_toy_latency)
    with pytest.raises(ValueError, match="no cell satisfies"):
        Space(np.zeros(N, bool))


def test_real_device_table_and_labels():
    from narformer_core.data import DataUnavailable

    try:
        r = run_search("evolution", 30, seed=0, device="pixel3", latency_budget=5.0)
    except DataUnavailable as e:  # pragma: no cover - only without the shared data folder
        pytest.skip(str(e))
    from narformer_core.data.latency_sets import nb201_device_latency

    lat = nb201_device_latency("pixel3")
    assert all(lat[e.index] <= 5.0 for e in r.history)
    assert set(r.test) == {"nb201-test", "analog"} and r.labels == "nb201-val"
    assert r.objective["best_latency_ms"] == pytest.approx(lat[r.best_index], abs=1e-4)
    with pytest.raises(ValueError, match="unknown NB201 latency device"):
        run_search("random", 10, device="toaster")
    d = r.to_dict()
    assert len(d["history"]) == 30 and d["best"]["arch"] == r.best_arch


def test_narformer_guide_trains_the_fast_preset_model_and_is_deterministic():
    """NAR-Former as the guide: retrained every round with narformer_guide_defaults() (a tiny
    epoch count here to keep the test short), spends the budget, repeats exactly per seed."""
    from narformer_core.search import narformer_guide_defaults

    kw = {"train_kwargs": {**narformer_guide_defaults()["train_kwargs"], "epochs": 2,
                           "model": {"d_model": 32, "n_heads": 2, "ffn_dim": 64, "depths": [1, 1, 1, 1]}}}
    runs = [run_search("predictor", 24, seed=1, labels=TOY, test_labels={}, predictor="narformer",
                       predictor_kwargs=kw, n_mutations=3) for _ in range(2)]
    assert runs[0].evaluations == 24
    assert [e.index for e in runs[0].history] == [e.index for e in runs[1].history]
    assert runs[0].options["predictor"] == "narformer"
    assert runs[0].options["predictor_kwargs"]["train_kwargs"]["epochs"] == 2


def test_narformer_guide_defaults_are_the_fast_preset_at_100_epochs():
    from narformer_core.cli import PRESETS
    from narformer_core.search import narformer_guide_defaults

    guide = narformer_guide_defaults()["train_kwargs"]
    assert guide == {**PRESETS["fast"], "epochs": 100}
    guide["model"]["d_model"] = 1                      # a caller's edit must not leak into the preset
    assert PRESETS["fast"]["model"]["d_model"] == 128
