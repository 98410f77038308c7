"""Session 21: extra training networks in the latency bench, and NAR-Former's cost-sum prior."""
import gzip
import json

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


def _data_set(path, lines, platform=None):
    """A data set file of these record lines (their platform replaced when given)."""
    if platform:
        lines = [json.dumps({**json.loads(ln), "platform_key": platform}) + "\n" for ln in lines]
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    return path


def test_extra_train_takes_several_files_and_refuses_repeats_and_other_platforms(tmp_path, capsys):
    """Session 22: ``--extra-train A B`` trains on both files' networks; a network twice, another
    platform's milliseconds or a missing file is refused before anything is fitted."""
    from test_score_in_domain_checkpoint import DEV_SET

    from narformer_core.cli import main as cli_main
    from narformer_core.latency.dataset import extra_train_paths

    if not DEV_SET.exists():
        pytest.skip("the measured development set is not in assets/latency")
    with gzip.open(DEV_SET, "rt") as f:
        lines = [next(f) for _ in range(120)]
    data = _data_set(tmp_path / "set.jsonl.gz", lines[:60])
    a = _data_set(tmp_path / "a.jsonl.gz", lines[60:90])
    b = _data_set(tmp_path / "b.jsonl.gz", lines[90:120])
    out = tmp_path / "bench.json"

    def bench(*extra):
        return cli_main(["bench", "latency", "--dataset", str(data), "--column", "median_ms", "--predictors", "flops",
                         "--no-lofo", "--quiet", "--out", str(out), "--save-in-domain", str(tmp_path / "fits"),
                         "--extra-train", *map(str, extra)])

    assert bench(a, b) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["extra_train"]["paths"] == [str(a), str(b)] and res["extra_train"]["n"] == 60
    assert sum(res["extra_train"]["per_family"].values()) == 60
    meta = load_predictor(tmp_path / "fits" / "flops_in_domain.pt").meta
    assert extra_train_paths(meta) == [str(a), str(b)]
    # Session 21's checkpoints name one file as "path".
    assert extra_train_paths({"extra_train": {"path": "x.jsonl.gz", "n": 3}}) == ["x.jsonl.gz"]
    assert extra_train_paths({}) == []

    capsys.readouterr()
    other = _data_set(tmp_path / "other.jsonl.gz", lines[60:90], platform="cpu-Other_CPU-ort1.0-t1-b1")
    repeat = _data_set(tmp_path / "repeat.jsonl.gz", lines[55:70])
    overlap = _data_set(tmp_path / "overlap.jsonl.gz", lines[85:100])
    # Networks labelled with an outside-zoo family (the test of unseen families) never train.
    outside = _data_set(tmp_path / "outside.jsonl.gz",
                        [json.dumps({**json.loads(ln), "family": "convnext"}) + "\n" for ln in lines[60:62]])
    for files, message in (([other], "milliseconds of two platforms do not mix"),
                           ([outside], "holds networks of convnext: outside-zoo families are the test"),
                           ([repeat], "repeats networks (5 of set.jsonl.gz): they could be test networks"),
                           ([a, overlap], "repeats networks (5 of a.jsonl.gz)"),
                           ([a, tmp_path / "none.jsonl.gz"], "no data set at")):
        assert bench(*files) == 2
        assert message in capsys.readouterr().err


def test_the_lab_says_what_else_a_checkpoint_trained_on():
    from narformer_core import app_services as svc

    assert svc.extra_training_sentence({}) is None
    assert svc.extra_training_sentence({"extra_train": {"path": "a/x.jsonl.gz", "n": 1000}}, 0.0) == (
        "It also trained on 1,000 further measured networks that are not in that set (`x.jsonl.gz`).")
    both = svc.extra_training_sentence({"extra_train": {"paths": ["a/x.jsonl.gz", "b/y.jsonl.gz"], "n": 2000}}, 0.15)
    assert "2,000 further measured networks" in both and "`x.jsonl.gz`, `y.jsonl.gz`" in both
    assert "weight 0.15 chosen on its validation networks" in both
    assert svc.extra_training_sentence({}, 0.3).startswith("Its prediction is blended")
