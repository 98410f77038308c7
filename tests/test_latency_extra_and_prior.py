"""Session 21: extra training networks in the latency bench, and NAR-Former's cost-sum prior."""
import numpy as np
import pytest
import torch

from test_latency_pretrain import TINY, labelled  # noqa: F401  (the fixture)

from narformer_core.latency.predictors import (PRIOR_WEIGHTS, LatencyCheckpointError, NARFormerLatency,
                                               _split_val, load_predictor)
from narformer_core.latency.train_latency import family_split, latency_bench
from narformer_core.metrics import mape


def test_cost_sum_prior_weight_is_chosen_on_validation_and_round_trips(labelled, tmp_path):  # noqa: F811
    graphs, y = labelled
    val, train = (graphs[:3], y[:3]), (graphs[3:], y[3:])
    plain = NARFormerLatency(**TINY).fit(*train, val=val, seed=0)
    p = NARFormerLatency(**TINY, prior_blend=True).fit(*train, val=val, seed=0)
    w = p.meta["prior_weight"]
    curve = {float(k): v for k, v in p.meta["prior_val_curve"].items()}
    assert w in PRIOR_WEIGHTS and sorted(curve) == list(PRIOR_WEIGHTS)
    # The chosen weight is the best on validation, the figure reported is that weight's, and
    # weight 0 is the ensemble alone (the same training, so the plain fit's validation figure).
    assert curve[w] == pytest.approx(min(curve.values()), abs=1e-4)
    assert p.meta["val_mape"] == pytest.approx(curve[w], abs=1e-4)
    assert p.meta["val_mape"] <= p.meta["val_mape_without_prior"] + 1e-9
    assert p.meta["val_mape_without_prior"] == pytest.approx(plain.meta["val_mape"], rel=1e-6)
    # The prediction is the log-space blend of the plain ensemble and the cost sum.
    want = np.exp((1 - w) * np.log(plain.predict(graphs)) + w * p.prior_model.predict_log(graphs))
    np.testing.assert_allclose(p.predict(graphs), want, rtol=1e-5)
    assert mape(p.predict(val[0]), val[1]) == pytest.approx(p.meta["val_mape"], rel=1e-4)
    q = load_predictor(p.save(tmp_path / "prior.pt"))
    assert q.prior_weight == w and q.prior_blend
    np.testing.assert_allclose(q.predict(graphs), p.predict(graphs), rtol=1e-5)
    np.testing.assert_allclose(np.exp(np.log(q.member_predictions(graphs)).mean(0)), q.predict(graphs), rtol=1e-4)
    # A checkpoint without the option loads with no prior; a weight without its cost sum is refused.
    r = load_predictor(plain.save(tmp_path / "plain.pt"))
    assert r.prior_model is None and r.prior_weight == 0 and not r.prior_blend
    st = torch.load(tmp_path / "prior.pt", weights_only=True)
    st["prior"], st["config"]["prior_weight"] = None, 0.3
    torch.save(st, tmp_path / "bad.pt")
    with pytest.raises(LatencyCheckpointError, match="prior weight"):
        load_predictor(tmp_path / "bad.pt")
    st["config"]["prior_weight"] = 7.0
    torch.save(st, tmp_path / "bad2.pt")
    with pytest.raises(LatencyCheckpointError, match="not a number in"):
        load_predictor(tmp_path / "bad2.pt")


class _Spy:
    """Records what every fit was given; predicts the training networks' geometric mean."""
    calls: list = []
    uses_validation = True

    def __init__(self):
        self.meta = {}

    def fit(self, g, ms, val=None, seed=0):
        type(self).calls.append({"train": [id(x) for x in g], "val": None if val is None else [id(x) for x in val[0]]})
        self.level = float(np.exp(np.log(ms).mean()))
        return self

    def predict(self, g):
        return np.full(len(g), self.level)


class _ClosedForm(_Spy):
    calls: list = []
    uses_validation = False


def test_extra_networks_only_train_and_leave_every_split_as_it_was(labelled):  # noqa: F811
    graphs, y = labelled
    fam = np.array(["a"] * 6 + ["b"] * 6)
    extra_graphs = graphs[:4]                   # stand-ins: only their identity matters here
    extra = (extra_graphs, np.array([1.0, 2.0, 3.0, 4.0]), ["a", "b", "b", "c"])
    _Spy.calls, _ClosedForm.calls = [], []
    res = latency_bench(graphs, y, fam, {"spy": _Spy, "closed": _ClosedForm}, seed=0, lofo=True, progress=False,
                        extra=extra)
    base = latency_bench(graphs, y, fam, {"spy": _Spy}, seed=0, lofo=False, progress=False)
    assert set(res["in_domain"]["spy"]) == set(base["in_domain"]["spy"]) == {"a", "b"}
    tr, te = family_split(fam, 0)
    fit, val = _split_val(len(tr), 0)
    ids = [id(g) for g in graphs]
    in_domain = _Spy.calls[0]
    # Validation: exactly the share the fit would have held out of the training networks alone.
    assert in_domain["val"] == [ids[i] for i in tr[val]]
    assert in_domain["train"] == [ids[i] for i in tr[fit]] + [id(g) for g in extra_graphs]
    assert not set(ids[i] for i in te) & set(in_domain["train"][:len(fit)])
    # A closed-form fit (no validation) gets every training network plus the extra ones.
    assert _ClosedForm.calls[0] == {"train": [ids[i] for i in tr] + [id(g) for g in extra_graphs], "val": None}
    # Out of domain the extra networks of the held-out family go with it.
    held_a, held_b = _Spy.calls[1], _Spy.calls[2]
    assert held_a["train"][-3:] == [id(g) for g in extra_graphs[1:]]       # "a" left out
    assert held_b["train"][-2:] == [id(extra_graphs[0]), id(extra_graphs[3])]   # "b" left out
    # The fit cache tells the two data sets apart.
    assert len(_Spy.calls) == 4 and res["in_domain"]["spy"]["a"]["n"] == base["in_domain"]["spy"]["a"]["n"]
